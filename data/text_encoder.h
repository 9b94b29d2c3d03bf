// Captions to text embeddings for the shapes experiment (SPEC §5): there is no umT5 here,
// so a caption becomes one row per word of a fixed, seeded word-embedding table plus a
// seeded embedding of the word's position. The tables are never stored: a word's vector
// is Philox normals keyed by a stable 64-bit FNV-1a hash of (seed, word), a position's
// likewise of (seed, "<position i>"), each scaled by 1/sqrt(2 * text_dim), so any word has
// a row and the same caption always gets the same rows on every machine.
// Why positions: Wan's cross-attention has no positional encoding on the text, so
// without them "a red circle moving left and a blue square moving up" would be the same
// bag of rows as "... red circle moving up and a blue square moving left": the DiT could
// not tell which object moves where (umT5's embeddings are contextual; these are not).
// Rows after the last word are zero (padding to text_len), and the empty caption "" is
// all zeros: the unconditional context of classifier-free guidance.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace rehyat::data {

// Lower-cased words of `caption`, split on whitespace (runs of spaces count once).
std::vector<std::string> caption_words(const std::string& caption);

class TextEncoder {
 public:
  TextEncoder(int64_t text_len, int64_t text_dim, uint64_t seed = 0);

  // [text_len, text_dim] f32. Throws rehyat::Error naming the caption when it has more
  // than text_len words.
  Tensor encode(const std::string& caption) const;
  // [B, text_len, text_dim] f32.
  Tensor encode_batch(const std::vector<std::string>& captions) const;

  int64_t text_len() const { return text_len_; }
  int64_t text_dim() const { return text_dim_; }
  uint64_t seed() const { return seed_; }

 private:
  // Writes the embedding of `caption` into out[text_len * text_dim].
  void encode_into(const std::string& caption, float* out) const;

  int64_t text_len_;
  int64_t text_dim_;
  uint64_t seed_;
};

}  // namespace rehyat::data
