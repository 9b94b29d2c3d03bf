// The built-in bitmap font of the sweep plots (sweep/plot.h): a 5×7 pixel font (plus a
// descender row), so the charts need no font files or FreeType. It covers printable ASCII (32..126) and a few
// symbols the sweep labels use (× · ± ° µ − … ≤ ≥); any other code point, and bytes
// that are not valid UTF-8, draw as a hollow box (U+FFFD's glyph).
//
// A glyph is 8 rows, top to bottom: rows 0..6 hold capitals and digits, row 7 only the
// descenders of g j p q y. Bit (4 − c) of a row is the pixel in column c (bit 4 is the
// leftmost column). Characters advance by 6 pixels (one blank column), lines by 10, both
// times the drawing scale.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace rehyat::sweep::font {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 8;   // including the descender row
inline constexpr int kCapHeight = 7;     // rows 0..6: capitals and digits
inline constexpr int kAdvance = 6;       // glyph width + one column of spacing
inline constexpr int kLineHeight = 10;   // glyph height + two rows of spacing

using Glyph = std::array<uint8_t, kGlyphHeight>;  // rows top to bottom, bit 4 = column 0

// The glyph of a code point (the hollow box for code points the font lacks).
const Glyph& glyph(char32_t code);
// Whether the font has its own glyph for `code` (false: it draws as the hollow box).
bool has_glyph(char32_t code);

// UTF-8 text -> code points; a byte that does not start a valid sequence becomes U+FFFD.
std::u32string decode_utf8(std::string_view text);

// Width in pixels of `text` drawn at `scale` (no trailing spacing column; 0 for "").
int text_width(std::string_view text, int scale);

}  // namespace rehyat::sweep::font
