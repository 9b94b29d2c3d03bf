// The shapes dataset on disk (HDF5) and the training loader over it. Rendering and text
// encoding happen once, at write time; training then reads videos and text embeddings
// by sample, in a deterministic shuffled order that a checkpoint can resume exactly.
//
// File schema, format "rehyat-shapes-1" (N samples, M = max_objects; readable with h5py):
//   /videos           f32 [N, 3, T, H, W]   RGB in [-1, 1], chunked one video per chunk
//   /text_embeddings  f32 [N, text_len, text_dim]   TextEncoder(text_len, text_dim, text_seed)
//                                            of the caption, chunked one sample per chunk
//   /captions         variable-length UTF-8 strings [N]
//   /trajectories     f32 [N, M, T, 2]      (x, y) centres in pixels; NaN for absent objects
//   /objects          i32 [N, M, 3]         (kind, colour, direction) enum values; -1 absent
//   /object_motion    f32 [N, M, 5]         (x0, y0, vx, vy, size); 0 for absent objects
//   attributes on "/":
//     format "rehyat-shapes-1" (string); seed, text_seed (u64); first_index (i64, sample
//     i of the file is render_shapes_sample(options, seed, first_index + i));
//     frames, height, width, min_objects, max_objects, text_len, text_dim (i64);
//     min_speed, max_speed, min_size, max_size (f64); gradient_background (i64, 0 or 1);
//     clear_frames (i64); wrap (i64, 0 or 1; absent in files written before the option,
//     which read as 0: they did not wrap).
//
// HDF5 access from this file's code (writer, ShapesDataset, the loader's worker thread)
// is serialised by one process-wide (recursive) mutex, shapes_hdf5_mutex(); other code
// that calls HDF5 while a DataLoader prefetches should hold it too.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/tensor.h"
#include "data/shapes.h"
#include "data/text_encoder.h"

namespace rehyat::data {

constexpr const char* kShapesFormat = "rehyat-shapes-1";

std::recursive_mutex& shapes_hdf5_mutex();

// Writes `count` samples (indices first..first+count-1) to `path` atomically: the file is
// written as "<path>.tmp.<pid>", fsynced and renamed, so a crash never leaves a partial
// file at `path` (an existing file there is replaced; asking first is the caller's job).
// The encoder's text_len and text_dim must match the options'. With show_progress, a line
// on stderr every few seconds says how far it got.
void write_shapes_dataset(const std::string& path, const ShapesOptions& options, uint64_t seed, int64_t first,
                          int64_t count, const TextEncoder& encoder, bool show_progress = true);

// Read side: open() checks the format attribute, every dataset's presence, dtype and shape;
// errors name the file and the dataset or attribute. Copies share one open file.
class ShapesDataset {
 public:
  static ShapesDataset open(const std::string& path);

  const std::string& path() const;
  int64_t size() const;
  ShapesOptions options() const;
  uint64_t seed() const;         // render seed
  uint64_t text_seed() const;    // TextEncoder seed of the stored embeddings
  int64_t first_index() const;   // render index of sample 0

  Tensor video(int64_t i) const;           // [3, T, H, W] f32
  Tensor text_embedding(int64_t i) const;  // [text_len, text_dim] f32
  std::string caption(int64_t i) const;
  std::vector<ShapeObject> objects(int64_t i) const;
  Tensor trajectory(int64_t i) const;      // [max_objects, T, 2] f32

 private:
  struct State;
  explicit ShapesDataset(std::shared_ptr<const State> state) : state_(std::move(state)) {}
  std::shared_ptr<const State> state_;
};

struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;  // samples of this rank's share of the epoch already returned
};

struct Batch {
  Tensor videos;                 // [B, 3, T, H, W] f32
  Tensor text;                   // [B, text_len, text_dim] f32
  std::vector<int64_t> indices;  // dataset rows of the batch
};

// Deterministic shuffled batches. Epoch e's order is a Fisher-Yates permutation of the
// dataset driven by Philox (seed, e) (the identity without shuffle). Rank r of `world`
// takes positions r, r + world, r + 2 world, ... of that order; every rank gets
// batches_per_epoch() = (N / world) / batch_size batches, the tail is dropped. With
// prefetch > 0 a background thread reads up to `prefetch` batches ahead (prefetch 0 reads
// in next()); both give the same batches. Errors of the reading thread are rethrown by
// next().
class DataLoader {
 public:
  DataLoader(const ShapesDataset& dataset, int64_t batch_size, uint64_t seed, bool shuffle = true, int rank = 0,
             int world = 1, int prefetch = 2);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  Batch next();                                 // wraps to the next epoch
  LoaderPosition position() const;              // of the next batch next() returns
  void set_position(const LoaderPosition& position);  // resume; index a multiple of batch_size

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  // The whole epoch's order (all ranks), dataset rows.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  struct Item {
    Batch batch;
    std::exception_ptr error;  // set: the worker ended here; stays queued, next() rethrows it
  };
  // This rank's rows for one epoch, computed once per epoch by whoever reads.
  struct Shard {
    int64_t epoch = -1;
    std::vector<int64_t> rows;
  };
  Batch load(const LoaderPosition& position, Shard& shard) const;
  LoaderPosition advance(LoaderPosition position) const;
  void start_worker();
  void stop_worker();
  void worker_loop();

  ShapesDataset dataset_;
  int64_t batch_size_;
  uint64_t seed_;
  bool shuffle_;
  int rank_, world_, prefetch_;
  int64_t batches_per_epoch_;

  LoaderPosition consumer_;  // next batch next() returns
  Shard consumer_shard_;     // used when prefetch == 0

  mutable std::mutex mutex_;  // guards everything below
  std::condition_variable changed_;
  std::deque<Item> queue_;
  LoaderPosition producer_;  // next batch the worker reads
  bool stopping_ = false;
  std::thread worker_;
};

}  // namespace rehyat::data
