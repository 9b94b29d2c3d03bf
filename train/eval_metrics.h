// Pixel-level quality metrics of the shapes experiment (SPEC §5), on host copies in double:
//
//   psnr                        student vs teacher video on the same noise and prompt;
//   trajectory_smoothness       of a detected object's centres (data/shapes.h detect_objects):
//                               constant-velocity motion has zero second differences
//                               (also across the edges of a wrapped video);
//   chunk_boundary_incoherence  how much more the video changes across ReHyAt chunk
//                               boundaries than inside chunks (what overlap To should fix):
//                               about 1 for a coherent video, > 1 when chunks jump.
//
// Results that have no defined value are NaN (documented per function), never an exception:
// a report averages them with NaN-aware means.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace rehyat::train {

// 10·log10(2² / MSE) for videos in [-1, 1] (peak-to-peak 2); a and b of one shape, any
// device and float dtype. +inf when they are equal; NaN when any value is NaN.
double psnr(const Tensor& a, const Tensor& b);

// centres [T, 2] (x, y per frame, NaN where the object was not found): the mean Euclidean
// norm of c_{t+1} − 2·c_t + c_{t−1} over the frames t whose centre and both neighbours are
// finite; NaN when there is no such frame (T < 3 or too few detections). With wrap the
// centres are those of a wrapped video (data::ShapesOptions::wrap, detect_objects(video,
// true)) in a width x height frame: the two steps are taken the short way round, so
// crossing an edge is no jump.
double trajectory_smoothness(const Tensor& centres, bool wrap = false, int64_t width = 0, int64_t height = 0);

// video [C, T, H, W], chunk_frames Tc >= 1. With d_t = mean |x_{t+1} − x_t| over (C, H, W)
// for t = 0 .. T−2, a transition t -> t+1 crosses a chunk boundary when (t+1) % Tc == 0.
// Returns mean d over boundary transitions / mean d over transitions inside chunks.
// NaN when there is no boundary (T <= Tc) or no transition inside a chunk (Tc == 1); +inf
// when the chunks are static inside but change at a boundary (0/0 = NaN for a static video).
double chunk_boundary_incoherence(const Tensor& video, int64_t chunk_frames);

}  // namespace rehyat::train
