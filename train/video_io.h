// Videos as images a person can look at (SPEC §4 "videos written as GIF/MP4/PNG frames"):
// the shapes experiment's videos are RGB latents in [-1, 1], so they are written directly,
// value v -> round((v + 1)·127.5) clamped to [0, 255] (NaN -> 0), each pixel blown up to a
// scale × scale block (nearest neighbour; the toy videos are 16×16).
//
//   write_png_strip    one PNG, the frames side by side left to right;
//   write_video_grid   one PNG, one such strip per video, top to bottom (the report);
//   write_gif          an animated GIF looping forever, frame_ms per frame, colours
//                      quantized to a fixed 6×6×6 colour cube (216 of the 256 palette
//                      entries; deterministic, and the shapes palette survives it).
// Frames (and rows) are separated by 1-px white lines in the PNGs.
//
// Files are written atomically (encoded in memory, then temp file + fsync + rename via
// core/atomic_file.h). libpng / giflib are optional build dependencies (REHYAT_PNG /
// REHYAT_GIF); without them these functions throw rehyat::Error saying so.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.h"

namespace rehyat::train {

// video [3, T, H, W] (any device, float dtype) -> PNG of (H·scale) × (T·W·scale + T − 1).
void write_png_strip(const std::string& path, const Tensor& video, int scale = 4);

// An RGB image (height rows of width pixels, 3 bytes each) as a PNG, atomically; throws
// naming `path` when rehyat was built without libpng (png_supported() says which).
void write_rgb_png(const std::string& path, int64_t width, int64_t height, const uint8_t* rgb);
bool png_supported();

// videos [B, 3, T, H, W] -> PNG of (B·H·scale + B − 1) × (T·W·scale + T − 1).
void write_video_grid(const std::string& path, const Tensor& videos, int scale = 4);

// video [3, T, H, W] -> T-frame GIF of (H·scale) × (W·scale), frame_ms per frame (rounded
// to the format's 10 ms units, at least 10 ms).
void write_gif(const std::string& path, const Tensor& video, int scale = 4, int frame_ms = 150);
// Whether this build can write GIFs (giflib found at configure time).
bool gif_supported();

}  // namespace rehyat::train
