// The sweep charts (sweep/plot.h) and their bitmap font (sweep/plot_font.h). The layout is
// checked on its own (ticks at 1-2-5 steps or decades, decades equally spaced, padded
// ranges, categories, legend placement, errors naming the file); the pictures by decoding
// the written PNG with libpng and looking for the series colours at the pixels layout_plot
// promises, and for glyph ink in every character cell of an all-ASCII title.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "sweep/plot.h"
#include "sweep/plot_font.h"
#include "temp_dir.h"

#ifdef REHYAT_PNG
#include <png.h>
#endif

namespace rehyat::sweep {
namespace {

using testing::TempDir;
using testing::error_message;
using testing::expect_contains;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- font -------------------------------------------------------------------------------

bool glyph_is_empty(const font::Glyph& glyph) {
  return std::all_of(glyph.begin(), glyph.end(), [](uint8_t row) { return row == 0; });
}

TEST(PlotFont, EveryPrintableAsciiCharacterHasItsOwnGlyph) {
  EXPECT_TRUE(glyph_is_empty(font::glyph(U' ')));
  for (char32_t c = 33; c <= 126; ++c) {
    EXPECT_TRUE(font::has_glyph(c)) << char(c);
    EXPECT_FALSE(glyph_is_empty(font::glyph(c))) << "glyph of '" << char(c) << "' is empty";
    for (const uint8_t row : font::glyph(c)) EXPECT_LT(row, 1 << font::kGlyphWidth) << char(c);
    for (char32_t d = 32; d < c; ++d)
      EXPECT_NE(font::glyph(c), font::glyph(d)) << "'" << char(c) << "' draws like '" << char(d) << "'";
  }
  // Capitals and digits stay above the descender row.
  for (char32_t c : std::u32string(U"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    EXPECT_EQ(font::glyph(c)[font::kCapHeight], 0) << char(c);
  EXPECT_NE(font::glyph(U'g')[font::kCapHeight], 0);
}

TEST(PlotFont, SymbolsAndUnknownCodePoints) {
  for (char32_t c : std::u32string(U"×·±°µ−…≤≥")) {
    EXPECT_TRUE(font::has_glyph(c)) << uint32_t(c);
    EXPECT_FALSE(glyph_is_empty(font::glyph(c))) << uint32_t(c);
  }
  EXPECT_NE(font::glyph(U'×'), font::glyph(U'x'));
  // Anything else draws as the hollow box, which looks like no ASCII character.
  EXPECT_FALSE(font::has_glyph(U'\u4E2D'));
  EXPECT_EQ(font::glyph(U'\u4E2D'), font::glyph(U'\uFFFD'));
  for (char32_t c = 32; c <= 126; ++c) EXPECT_NE(font::glyph(U'\uFFFD'), font::glyph(c)) << char(c);
}

TEST(PlotFont, DecodesUtf8AndMeasuresText) {
  EXPECT_EQ(font::decode_utf8("Tc×To"), U"Tc×To");
  EXPECT_EQ(font::decode_utf8("a\xff" "b"), U"a\uFFFDb");         // not a lead byte
  EXPECT_EQ(font::decode_utf8("\xC0\xAF"), U"\uFFFD\uFFFD");      // overlong '/'
  EXPECT_EQ(font::decode_utf8("\xE2\x88"), U"\uFFFD\uFFFD");      // cut short
  EXPECT_EQ(font::decode_utf8("\xF0\x9F\x99\x82"), U"\U0001F642");
  EXPECT_EQ(font::text_width("", 1), 0);
  EXPECT_EQ(font::text_width("a", 1), font::kGlyphWidth);
  EXPECT_EQ(font::text_width("ab×", 2), (3 * font::kAdvance - 1) * 2);
}

// ---- numbers and layout --------------------------------------------------------------------

TEST(PlotNumbers, FormatsCompactly) {
  EXPECT_EQ(format_number(0.0226), "0.0226");
  EXPECT_EQ(format_number(1.5e12), "1.5e12");
  EXPECT_EQ(format_number(2e-5), "2e-5");
  EXPECT_EQ(format_number(123456.0), "1.23e5");
  EXPECT_EQ(format_number(999.7), "1e3");  // rounds up into the next decade
  EXPECT_EQ(format_number(100.0), "100");
  EXPECT_EQ(format_number(-0.5), "-0.5");
  EXPECT_EQ(format_number(1234.0, 4), "1234");
  EXPECT_EQ(format_number(0.0), "0");
  EXPECT_EQ(format_number(kNaN), "nan");
  EXPECT_EQ(format_number(-INFINITY), "-inf");
}

// Steps between consecutive tick values (all equal on a linear axis) and the value each
// label spells.
void expect_nice_linear_ticks(const std::vector<AxisTick>& ticks, double lo, double hi) {
  ASSERT_GE(ticks.size(), 2u);
  const double step = ticks[1].value - ticks[0].value;
  const double mantissa = step / std::pow(10.0, std::floor(std::log10(step) + 1e-9));
  EXPECT_TRUE(std::abs(mantissa - 1) < 1e-6 || std::abs(mantissa - 2) < 1e-6 || std::abs(mantissa - 5) < 1e-6)
      << "step " << step;
  for (size_t i = 0; i < ticks.size(); ++i) {
    EXPECT_GE(ticks[i].value, lo - 1e-9 * std::abs(lo));
    EXPECT_LE(ticks[i].value, hi + 1e-9 * std::abs(hi));
    EXPECT_NEAR(ticks[i].value, ticks[0].value + double(i) * step, 1e-6 * step);
    EXPECT_NEAR(std::stod(ticks[i].label), ticks[i].value, 1e-6 * step) << ticks[i].label;
  }
}

TEST(PlotLayout, LinearAxesPadTheDataAndTickAtNiceSteps) {
  const std::vector<Series> series = {{"a", {1, 2, 3, 4}, {0.0312, 0.0261, 0.0230, 0.0221}},
                                      {"b", {1.5, 2.5}, {0.0290, kNaN}}};
  PlotOptions options;
  options.title = "t";
  const PlotLayout layout = layout_plot(series, options);
  EXPECT_LT(layout.x_min, 1.0);
  EXPECT_GT(layout.x_max, 4.0);
  EXPECT_LT(layout.y_min, 0.0221);
  EXPECT_GT(layout.y_max, 0.0312);
  EXPECT_LT(layout.y_max - layout.y_min, 0.02);  // zoomed on the data, 0 not forced in
  expect_nice_linear_ticks(layout.x_ticks, layout.x_min, layout.x_max);
  expect_nice_linear_ticks(layout.y_ticks, layout.y_min, layout.y_max);
  EXPECT_GE(layout.y_ticks.size(), 4u);
  // The visible range spans the plot area exactly.
  const PixelPoint low = layout.to_pixel(layout.x_min, layout.y_min), high = layout.to_pixel(layout.x_max, layout.y_max);
  EXPECT_DOUBLE_EQ(low.column, layout.plot.left);
  EXPECT_DOUBLE_EQ(high.column, layout.plot.right() - 1);
  EXPECT_DOUBLE_EQ(low.row, layout.plot.bottom() - 1);
  EXPECT_DOUBLE_EQ(high.row, layout.plot.top);
  // Everything fits in the image, the title above the plot.
  EXPECT_GT(layout.plot.left, 0);
  EXPECT_LT(layout.plot.right(), options.width);
  EXPECT_LT(layout.plot.bottom(), options.height);
  EXPECT_LT(layout.title.bottom(), layout.plot.top);
}

TEST(PlotLayout, LargeValuesUseOneCompactNotation) {
  const std::vector<Series> series = {{"", {0, 1}, {1.2e12, 3.0e12}}};
  const PlotLayout layout = layout_plot(series, PlotOptions{});
  expect_nice_linear_ticks(layout.y_ticks, layout.y_min, layout.y_max);
  for (const AxisTick& tick : layout.y_ticks) {
    EXPECT_EQ(tick.label.find('+'), std::string::npos) << tick.label;
    EXPECT_TRUE(tick.value == 0 || tick.label.find('e') != std::string::npos) << tick.label;
  }
}

TEST(PlotLayout, ConstantSeriesGetsAPaddedRange) {
  const PlotLayout layout = layout_plot({{"flat", {1, 2, 3}, {0.5, 0.5, 0.5}}}, PlotOptions{});
  EXPECT_NEAR(layout.y_min, 0.475, 1e-12);
  EXPECT_NEAR(layout.y_max, 0.525, 1e-12);
  expect_nice_linear_ticks(layout.y_ticks, layout.y_min, layout.y_max);
  EXPECT_NEAR(layout.to_pixel(2, 0.5).row, layout.plot.top + (layout.plot.height - 1) / 2.0, 1e-6);
  // Around zero: ±1.
  const PlotLayout zero = layout_plot({{"", {7}, {0}}}, PlotOptions{});
  EXPECT_DOUBLE_EQ(zero.y_min, -1);
  EXPECT_DOUBLE_EQ(zero.y_max, 1);
  EXPECT_NEAR(zero.x_min, 7 - 0.35, 1e-12);
  EXPECT_NEAR(zero.x_max, 7 + 0.35, 1e-12);
}

TEST(PlotLayout, LogAxisPlacesDecadesEquallySpaced) {
  PlotOptions options;
  options.log_x = true;
  const PlotLayout layout = layout_plot({{"q", {1e9, 3e10, 1e12, 5e13}, {4, 3, 2, 1}}}, options);
  ASSERT_EQ(layout.x_ticks.size(), 5u);
  const std::vector<std::string> labels = {"1e9", "1e10", "1e11", "1e12", "1e13"};
  for (size_t i = 0; i < layout.x_ticks.size(); ++i) {
    EXPECT_DOUBLE_EQ(layout.x_ticks[i].value, std::pow(10.0, 9 + int(i)));
    EXPECT_EQ(layout.x_ticks[i].label, labels[i]);
  }
  const double decade = layout.to_pixel(1e10, 0).column - layout.to_pixel(1e9, 0).column;
  EXPECT_GT(decade, 50);
  for (size_t i = 1; i < layout.x_ticks.size(); ++i)
    EXPECT_NEAR(layout.to_pixel(layout.x_ticks[i].value, 0).column - layout.to_pixel(layout.x_ticks[i - 1].value, 0).column,
                decade, 1e-6);
  // 3e10 lies log10(3) of a decade right of 1e10.
  EXPECT_NEAR(layout.to_pixel(3e10, 0).column - layout.to_pixel(1e10, 0).column, std::log10(3.0) * decade, 1e-6);
  // Minor grid at 2..9 × 10^k, none of them a labelled decade.
  EXPECT_FALSE(layout.x_minor.empty());
  for (double x : layout.x_minor) {
    EXPECT_GT(x, layout.x_min);
    EXPECT_LT(x, layout.x_max);
    const double mantissa = x / std::pow(10.0, std::floor(std::log10(x) + 1e-9));
    EXPECT_NEAR(mantissa, std::round(mantissa), 1e-9);
    EXPECT_GE(std::round(mantissa), 2);
  }
}

TEST(PlotLayout, NarrowLogRangesStillGetSeveralTicks) {
  PlotOptions options;
  options.log_x = true;
  // Under two decades: 1-2-5 × 10^k.
  const PlotLayout within = layout_plot({{"", {8e11, 3e12, 2.2e13}, {3, 2, 1}}}, options);
  std::vector<std::string> labels;
  for (const AxisTick& tick : within.x_ticks) labels.push_back(tick.label);
  EXPECT_EQ(labels, (std::vector<std::string>{"1e12", "2e12", "5e12", "1e13", "2e13"}));
  // A sliver of a decade: linear 1-2-5 steps, in range.
  const PlotLayout sliver = layout_plot({{"", {1.2e12, 1.25e12}, {3, 2}}}, options);
  ASSERT_GE(sliver.x_ticks.size(), 2u);
  expect_nice_linear_ticks(sliver.x_ticks, sliver.x_min, sliver.x_max);
}

TEST(PlotLayout, CategoricalAxisLabelsEachCategory) {
  PlotOptions options;
  options.x_tick_labels = {"1", "2", "4", "8", "16"};
  const PlotLayout layout = layout_plot({{"To=0", {0, 1, 2, 3, 4}, {5, 4, 3, 2, 1}}}, options);
  ASSERT_EQ(layout.x_ticks.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(layout.x_ticks[i].value, double(i));
    EXPECT_EQ(layout.x_ticks[i].label, options.x_tick_labels[i]);
  }
  EXPECT_DOUBLE_EQ(layout.x_min, -0.5);
  EXPECT_DOUBLE_EQ(layout.x_max, 4.5);
  EXPECT_EQ(layout.x_tick_rows, 1);
  const double slot = layout.to_pixel(1, 0).column - layout.to_pixel(0, 0).column;
  EXPECT_NEAR(layout.to_pixel(4, 0).column - layout.to_pixel(0, 0).column, 4 * slot, 1e-6);

  // Labels too wide for their slots alternate between two rows.
  PlotOptions crowded;
  for (int i = 0; i < 16; ++i) crowded.x_tick_labels.push_back(fmt::format("Tc={},To={}", 4 * i, i % 3));
  EXPECT_EQ(layout_plot({{"", {0, 15}, {1, 2}}}, crowded).x_tick_rows, 2);
}

TEST(PlotLayout, LegendAvoidsTheData) {
  // A rising diagonal covers the bottom-left and top-right corners.
  Series rising{"rising", {}, {}};
  for (int i = 0; i <= 20; ++i) {
    rising.x.push_back(i);
    rising.y.push_back(i);
  }
  const PlotLayout layout = layout_plot({rising}, PlotOptions{});
  ASSERT_GT(layout.legend.width, 0);
  const PixelRect& legend = layout.legend;
  EXPECT_GE(legend.left, layout.plot.left);
  EXPECT_LE(legend.right(), layout.plot.right());
  EXPECT_GE(legend.top, layout.plot.top);
  EXPECT_LE(legend.bottom(), layout.plot.bottom());
  for (double t = 0; t <= 20; t += 0.05) {
    const PixelPoint p = layout.to_pixel(t, t);
    EXPECT_FALSE(p.column >= legend.left && p.column < legend.right() && p.row >= legend.top && p.row < legend.bottom())
        << "legend covers the line at x = " << t;
  }
  // No labels, no legend.
  rising.label.clear();
  EXPECT_EQ(layout_plot({rising}, PlotOptions{}).legend.width, 0);
}

TEST(PlotLayout, CrowdedLegendGoesBesideThePlot) {
  std::vector<Series> series;
  for (int k = 0; k < 12; ++k) series.push_back({fmt::format("run {} with a long label", k), {0, 1, 2}, {0.0 + k, 1.0 + k, 2.0 + k}});
  const PlotLayout layout = layout_plot(series, PlotOptions{});
  EXPECT_GT(layout.legend.left, layout.plot.right());
  EXPECT_LE(layout.legend.right(), layout.width);
}

TEST(PlotLayout, LargeImagesDrawAtTwiceTheScale) {
  PlotOptions options;
  EXPECT_EQ(layout_plot({{"", {0, 1}, {0, 1}}}, options).scale, 1);
  options.width = 1600;
  options.height = 1000;
  options.title = "big";
  const PlotLayout big = layout_plot({{"", {0, 1}, {0, 1}}}, options);
  EXPECT_EQ(big.scale, 2);
  EXPECT_EQ(big.title.height, 4 * font::kGlyphHeight);
}

TEST(PlotLayout, BadInputNamesThePlot) {
  const std::string path = "/tmp/nowhere/sweep-quality.png";
  PlotOptions options;
  expect_contains(error_message([&] { layout_plot({{"a", {1, 2}, {1, 2, 3}}}, options, path); }),
                  {path, "series 0 ('a')", "2 x values but 3 y values"});
  expect_contains(error_message([&] { layout_plot({}, options, path); }), {path, "nothing to plot"});
  expect_contains(error_message([&] { layout_plot({{"a", {1, 2}, {kNaN, INFINITY}}}, options, path); }),
                  {path, "nothing to plot"});
  expect_contains(error_message([&] { layout_plot({{"a", {1, kNaN}, {1, 2}}}, options, path); }),
                  {path, "non-finite x at index 1"});
  options.log_x = true;
  expect_contains(error_message([&] { layout_plot({{"", {1e9, 0}, {1, 2}}}, options, path); }),
                  {path, "series 0", "x = 0 at index 1", "x > 0"});
  options.x_tick_labels = {"a", "b"};
  expect_contains(error_message([&] { layout_plot({{"", {0, 1}, {1, 2}}}, options, path); }), {path, "log_x"});
  options.log_x = false;
  expect_contains(error_message([&] { layout_plot({{"", {0, 2}, {1, 2}}}, options, path); }),
                  {path, "x = 2 at index 1", "categories"});
  options = PlotOptions{};
  options.width = 100;
  expect_contains(error_message([&] { layout_plot({{"", {0, 1}, {1, 2}}}, options, path); }), {path, "100x480"});
}

// ---- pictures ---------------------------------------------------------------------------

struct Pixels {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]
  Rgb at(int column, int row) const {
    const size_t i = (size_t(row) * size_t(width) + size_t(column)) * 3;
    return {rgb[i], rgb[i + 1], rgb[i + 2]};
  }
  // Whether `colour` appears within `radius` pixels of `point`.
  bool has_near(PixelPoint point, Rgb colour, int radius) const {
    const int column = int(std::lround(point.column)), row = int(std::lround(point.row));
    for (int y = row - radius; y <= row + radius; ++y)
      for (int x = column - radius; x <= column + radius; ++x)
        if (x >= 0 && y >= 0 && x < width && y < height && at(x, y) == colour) return true;
    return false;
  }
  bool any_dark(const PixelRect& rect) const {
    for (int y = rect.top; y < rect.bottom(); ++y)
      for (int x = rect.left; x < rect.right(); ++x) {
        const Rgb c = at(x, y);
        if (c[0] < 100 && c[1] < 100 && c[2] < 100) return true;
      }
    return false;
  }
};

Pixels rendered(const std::vector<Series>& series, const PlotOptions& options) {
  PlotImage image = render_plot(series, options);
  return {image.width, image.height, std::move(image.rgb)};
}

TEST(PlotPicture, SeriesColoursSitWhereTheLayoutSays) {
  const std::vector<Series> series = {{"a", {1, 2, 3, 4}, {0.0312, 0.0261, 0.0230, 0.0221}},
                                      {"b", {1, 2, 3, 4}, {0.0290, 0.0255, kNaN, 0.0240}}};
  PlotOptions options;
  options.title = "quality";
  const PlotLayout layout = layout_plot(series, options);
  const Pixels image = rendered(series, options);
  ASSERT_EQ(image.width, options.width);
  ASSERT_EQ(image.height, options.height);
  // Each point's marker centre is exactly its series colour.
  for (size_t s = 0; s < series.size(); ++s)
    for (size_t i = 0; i < series[s].x.size(); ++i) {
      if (std::isnan(series[s].y[i])) continue;
      const PixelPoint p = layout.to_pixel(series[s].x[i], series[s].y[i]);
      EXPECT_EQ(image.at(int(std::lround(p.column)), int(std::lround(p.row))), series_color(s)) << s << " " << i;
    }
  EXPECT_NE(series_color(0), series_color(1));
  EXPECT_EQ(image.at(0, 0), (Rgb{255, 255, 255}));
  // Series a's line runs between its points ...
  const PixelPoint a1 = layout.to_pixel(1, 0.0312), a2 = layout.to_pixel(2, 0.0261);
  EXPECT_TRUE(image.has_near({(a1.column + a2.column) / 2, (a1.row + a2.row) / 2}, series_color(0), 1));
  // ... and series b's breaks at its missing point: nothing of b's colour halfway from
  // x = 2 to x = 4, where a joined line would pass.
  const PixelPoint b2 = layout.to_pixel(2, 0.0255), b4 = layout.to_pixel(4, 0.0240);
  EXPECT_FALSE(image.has_near({(b2.column + b4.column) / 2, (b2.row + b4.row) / 2}, series_color(1), 3));
  // The frame is dark, the grid light.
  EXPECT_TRUE(image.any_dark({layout.plot.left - 1, layout.plot.top, 1, layout.plot.height}));
  const int grid_row = int(std::lround(layout.to_pixel(0, layout.y_ticks[1].value).row));
  const Rgb grid = image.at(layout.plot.left + 2, grid_row);
  EXPECT_TRUE(grid[0] > 180 && grid[0] < 255) << int(grid[0]);
}

TEST(PlotPicture, ScatterDoesNotJoinPoints) {
  const std::vector<Series> series = {{"", {0, 10}, {0, 10}}};
  PlotOptions options;
  options.lines = false;
  const PlotLayout layout = layout_plot(series, options);
  const Pixels image = rendered(series, options);
  EXPECT_TRUE(image.has_near(layout.to_pixel(0, 0), series_color(0), 0));
  EXPECT_FALSE(image.has_near(layout.to_pixel(5, 5), series_color(0), 4));
  options.lines = true;
  EXPECT_TRUE(rendered(series, options).has_near(layout.to_pixel(5, 5), series_color(0), 1));
}

TEST(PlotPicture, EverySeriesHasItsOwnColouredMarker) {
  std::vector<Series> series;
  for (int k = 0; k < 10; ++k) series.push_back({"", {double(k)}, {double(k)}});
  PlotOptions options;
  options.lines = false;
  const PlotLayout layout = layout_plot(series, options);
  const Pixels image = rendered(series, options);
  // Each marker's ink (pixels of exactly its colour in a 13×13 box): 5 to 7 pixels across.
  for (int k = 0; k < 10; ++k) {
    const PixelPoint p = layout.to_pixel(k, k);
    int count = 0;
    for (int y = int(p.row) - 6; y <= int(p.row) + 6; ++y)
      for (int x = int(p.column) - 6; x <= int(p.column) + 6; ++x) count += image.at(x, y) == series_color(size_t(k));
    EXPECT_GE(count, 9) << "series " << k;
    EXPECT_LE(count, 49) << "series " << k;
    for (int j = 0; j < k; ++j) EXPECT_NE(series_color(size_t(k)), series_color(size_t(j)));
  }
}

TEST(PlotPicture, TitleDrawsEveryPrintableAsciiCharacter) {
  std::string all;
  for (char c = 32; c <= 126; ++c) all += c;
  PlotOptions options;
  options.title = all;
  options.width = 1400;  // room for 95 characters at scale 2
  const PlotLayout layout = layout_plot({{"", {0, 1}, {0, 1}}}, options);
  const Pixels image = rendered({{"", {0, 1}, {0, 1}}}, options);
  const int scale = layout.title.height / font::kGlyphHeight;
  ASSERT_EQ(scale, 2);
  ASSERT_EQ(layout.title.width, font::text_width(all, scale));
  for (size_t i = 0; i < all.size(); ++i) {
    const PixelRect cell{layout.title.left + int(i) * font::kAdvance * scale, layout.title.top,
                         font::kGlyphWidth * scale, layout.title.height};
    EXPECT_EQ(image.any_dark(cell), all[i] != ' ') << "character '" << all[i] << "'";
  }
}

TEST(PlotPicture, CategoryAndAxisLabelsAreDrawn) {
  PlotOptions options;
  options.x_tick_labels = {"1", "2", "4", "8", "16"};
  options.x_label = "chunk frames Tc";
  options.y_label = "val MSE";
  const std::vector<Series> series = {{"To=0", {0, 1, 2, 3, 4}, {5, 4, 3, 2, 1}}};
  const PlotLayout layout = layout_plot(series, options);
  const Pixels image = rendered(series, options);
  const int label_top = layout.plot.bottom() + 1 + 4 + 3;  // frame, tick mark, gap at scale 1
  for (int i = 0; i < 5; ++i) {
    const int column = int(std::lround(layout.to_pixel(i, 1).column));
    EXPECT_TRUE(image.any_dark({column - 6, label_top, 13, font::kGlyphHeight})) << "category " << i;
    // Nothing between categories.
    const int between = int(std::lround(layout.to_pixel(i + 0.5, 1).column));
    if (i < 4) {
      EXPECT_FALSE(image.any_dark({between - 1, label_top, 3, font::kGlyphHeight})) << "after category " << i;
    }
  }
  EXPECT_TRUE(image.any_dark(layout.x_label));
  EXPECT_TRUE(image.any_dark(layout.y_label));
  EXPECT_GT(layout.y_label.height, layout.y_label.width);  // upright
  EXPECT_LT(layout.y_label.right(), layout.plot.left);
  EXPECT_GT(layout.x_label.top, layout.plot.bottom());
}

#ifdef REHYAT_PNG
Pixels read_png(const std::string& path) {
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  EXPECT_TRUE(png_image_begin_read_from_file(&image, path.c_str())) << image.message;
  image.format = PNG_FORMAT_RGB;
  Pixels out{int(image.width), int(image.height), std::vector<uint8_t>(PNG_IMAGE_SIZE(image))};
  EXPECT_TRUE(png_image_finish_read(&image, nullptr, out.rgb.data(), 0, nullptr)) << image.message;
  return out;
}
#endif

TEST(PlotPng, WritesTheChartAsDrawn) {
#ifndef REHYAT_PNG
  GTEST_SKIP() << "rehyat was built without libpng: no PNG to decode";
#else
  TempDir dir;
  const std::vector<Series> series = {{"softmax", {1.2e12, 3.4e12, 1.1e13}, {0.0312, 0.0261, 0.0230}},
                                      {"hybrid", {8e11, 2.1e12, 6.0e12}, {0.0340, 0.0282, 0.0240}}};
  PlotOptions options;
  options.title = "quality vs FLOPs";
  options.x_label = "FLOPs";
  options.y_label = "val MSE";
  options.log_x = true;
  options.width = 640;
  options.height = 400;
  write_plot_png(dir.file("flops.png"), series, options);
  const Pixels png = read_png(dir.file("flops.png"));
  ASSERT_EQ(png.width, 640);
  ASSERT_EQ(png.height, 400);
  EXPECT_EQ(png.rgb, rendered(series, options).rgb);
  const PlotLayout layout = layout_plot(series, options);
  EXPECT_TRUE(png.has_near(layout.to_pixel(3.4e12, 0.0261), series_color(0), 0));
  EXPECT_TRUE(png.has_near(layout.to_pixel(2.1e12, 0.0282), series_color(1), 0));
  EXPECT_EQ(dir.entry_count(), 1u);  // no temp file left behind
#endif
}

TEST(PlotPng, ErrorsNameTheFileAndWriteNothing) {
  TempDir dir;
  const std::string path = dir.file("bad.png");
  PlotOptions options;
  expect_contains(error_message([&] { write_plot_png(path, {{"a", {1, 2}, {1}}}, options); }), {path, "2 x values"});
  options.log_x = true;
  expect_contains(error_message([&] { write_plot_png(path, {{"a", {-1, 2}, {1, 2}}}, options); }), {path, "x > 0"});
  expect_contains(error_message([&] { write_plot_png(path, {}, options); }), {path, "nothing to plot"});
  EXPECT_EQ(dir.entry_count(), 0u);
  if (plot_png_supported()) {
    expect_contains(error_message([&] { write_plot_png(dir.file("missing/dir/x.png"), {{"", {1}, {1}}}, PlotOptions{}); }),
                    {"missing/dir/x.png"});
  } else {
    expect_contains(error_message([&] { write_plot_png(path, {{"", {1}, {1}}}, PlotOptions{}); }), {path, "libpng"});
  }
}

}  // namespace
}  // namespace rehyat::sweep
