// Seeded word and position embeddings. The Philox key of a word is FNV-1a-64 over the
// seed's 8 little-endian bytes followed by the word's bytes (a position i uses the text
// "<position i>", which no whitespace-split word can equal); element d of row i is
// (normal(word key, d) + normal(position key, d)) / sqrt(2 * text_dim).
#include "data/text_encoder.h"

#include <cctype>
#include <cmath>
#include <cstring>
#include <string>

#include "core/check.h"
#include "core/philox.h"

namespace rehyat::data {

namespace {

uint64_t word_key(uint64_t seed, const std::string& word) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a 64 offset basis
  auto mix = [&hash](unsigned char byte) {
    hash ^= byte;
    hash *= 0x100000001b3ull;  // FNV-1a 64 prime
  };
  for (int b = 0; b < 8; ++b) mix((unsigned char)(seed >> (8 * b)));
  for (char c : word) mix((unsigned char)c);
  return hash;
}

}  // namespace

std::vector<std::string> caption_words(const std::string& caption) {
  std::vector<std::string> words;
  std::string word;
  for (char c : caption) {
    if (std::isspace((unsigned char)c)) {
      if (!word.empty()) words.push_back(std::move(word));
      word.clear();
    } else {
      word += char(std::tolower((unsigned char)c));
    }
  }
  if (!word.empty()) words.push_back(std::move(word));
  return words;
}

TextEncoder::TextEncoder(int64_t text_len, int64_t text_dim, uint64_t seed)
    : text_len_(text_len), text_dim_(text_dim), seed_(seed) {
  REHYAT_CHECK(text_len >= 1 && text_dim >= 1, "TextEncoder: text_len and text_dim must be positive (got {}, {})",
               text_len, text_dim);
}

void TextEncoder::encode_into(const std::string& caption, float* out) const {
  const std::vector<std::string> words = caption_words(caption);
  REHYAT_CHECK(int64_t(words.size()) <= text_len_, "caption \"{}\" has {} words, more than text_len {}", caption,
               words.size(), text_len_);
  std::memset(out, 0, size_t(text_len_ * text_dim_) * sizeof(float));
  const float scale = 1.0f / std::sqrt(2.0f * float(text_dim_));
  for (size_t w = 0; w < words.size(); ++w) {
    const uint64_t key = word_key(seed_, words[w]);
    const uint64_t position = word_key(seed_, "<position " + std::to_string(w) + ">");
    float* row = out + int64_t(w) * text_dim_;
    for (int64_t d = 0; d < text_dim_; ++d)
      row[d] = (philox::normal(key, uint64_t(d)) + philox::normal(position, uint64_t(d))) * scale;
  }
}

Tensor TextEncoder::encode(const std::string& caption) const {
  Tensor out = Tensor::empty({text_len_, text_dim_});  // [text_len, text_dim]
  encode_into(caption, out.data<float>());
  return out;
}

Tensor TextEncoder::encode_batch(const std::vector<std::string>& captions) const {
  Tensor out = Tensor::empty({int64_t(captions.size()), text_len_, text_dim_});  // [B, text_len, text_dim]
  for (size_t b = 0; b < captions.size(); ++b) encode_into(captions[b], out.data<float>() + b * text_len_ * text_dim_);
  return out;
}

}  // namespace rehyat::data
