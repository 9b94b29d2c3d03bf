// Shapes dataset HDF5 writer and reader, and the DataLoader. Videos and text embeddings
// are written sample by sample (one chunk each), so memory stays bounded for large N; the
// small per-sample records (captions, trajectories, objects) are gathered and written at
// the end. All HDF5 calls hold shapes_hdf5_mutex(): the loader reads from its worker
// thread while the training thread may open other files.
#include "data/shapes_dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "core/check.h"
#include "core/philox.h"
#include "data/hdf5_file.h"

namespace rehyat::data {

std::recursive_mutex& shapes_hdf5_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

namespace {

using Lock = std::lock_guard<std::recursive_mutex>;

constexpr const char* kVideos = "/videos";
constexpr const char* kTextEmbeddings = "/text_embeddings";
constexpr const char* kCaptions = "/captions";
constexpr const char* kTrajectories = "/trajectories";
constexpr const char* kObjects = "/objects";
constexpr const char* kObjectMotion = "/object_motion";

Hdf5Id utf8_string_type() {
  Hdf5Id type(H5Tcopy(H5T_C_S1));
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  return type;
}

std::vector<hsize_t> to_hsize(const Shape& shape) { return std::vector<hsize_t>(shape.begin(), shape.end()); }

// --- writing ---------------------------------------------------------------------------

void write_attribute(const std::string& path, hid_t file, const char* name, hid_t type, const void* value) {
  Hdf5Id space(H5Screate(H5S_SCALAR));
  Hdf5Id attribute(H5Acreate2(file, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  if (!attribute.valid() || H5Awrite(attribute.get(), type, value) < 0)
    throw_hdf5_error(path, fmt::format("cannot write attribute '{}'", name));
}

Hdf5Id create_dataset(const std::string& path, hid_t file, const char* name, hid_t type, const Shape& shape,
                      bool chunk_per_sample) {
  const std::vector<hsize_t> dims = to_hsize(shape);
  Hdf5Id space(H5Screate_simple(int(dims.size()), dims.data(), nullptr));
  Hdf5Id plist(H5Pcreate(H5P_DATASET_CREATE));
  if (chunk_per_sample) {
    std::vector<hsize_t> chunk = dims;
    chunk[0] = 1;
    H5Pset_chunk(plist.get(), int(chunk.size()), chunk.data());
  }
  Hdf5Id dataset(H5Dcreate2(file, name, type, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT));
  if (!dataset.valid()) throw_hdf5_error(path, fmt::format("cannot create dataset '{}'", name));
  return dataset;
}

// Writes rows [row, row + rows) of `dataset` (whose shape is `shape`) from `data`.
void write_rows(const std::string& path, hid_t dataset, const char* name, hid_t mem_type, const Shape& shape,
                int64_t row, int64_t rows, const void* data) {
  std::vector<hsize_t> start(shape.size(), 0), count = to_hsize(shape);
  start[0] = hsize_t(row);
  count[0] = hsize_t(rows);
  Hdf5Id file_space(H5Dget_space(dataset));
  Hdf5Id mem_space(H5Screate_simple(int(count.size()), count.data(), nullptr));
  if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0 ||
      H5Dwrite(dataset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data) < 0)
    throw_hdf5_error(path, fmt::format("cannot write dataset '{}' rows {}..{}", name, row, row + rows - 1));
}

// Writes the whole file at `file_path` (the temp file); `path` is the name errors use.
void write_file(const std::string& path, const std::string& file_path, const ShapesOptions& options, uint64_t seed,
                int64_t first, int64_t count, const TextEncoder& encoder, bool show_progress) {
  const int64_t N = count, M = options.max_objects, T = options.frames, H = options.height, W = options.width;
  const int64_t L = options.text_len, D = options.text_dim;
  Lock lock(shapes_hdf5_mutex());
  Hdf5QuietErrors quiet;
  Hdf5Id file(H5Fcreate(file_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  if (!file.valid()) throw_hdf5_error(path, fmt::format("cannot create '{}'", file_path));

  Hdf5Id string_type = utf8_string_type();
  const char* format = kShapesFormat;
  write_attribute(path, file.get(), "format", string_type.get(), &format);
  const uint64_t text_seed = encoder.seed();
  write_attribute(path, file.get(), "seed", H5T_NATIVE_UINT64, &seed);
  write_attribute(path, file.get(), "text_seed", H5T_NATIVE_UINT64, &text_seed);
  const int64_t gradient = options.gradient_background ? 1 : 0, wrap = options.wrap ? 1 : 0;
  const std::pair<const char*, const int64_t*> integers[] = {
      {"first_index", &first},         {"frames", &options.frames},           {"height", &options.height},
      {"width", &options.width},       {"min_objects", &options.min_objects}, {"max_objects", &options.max_objects},
      {"text_len", &options.text_len}, {"text_dim", &options.text_dim},       {"gradient_background", &gradient},
      {"clear_frames", &options.clear_frames}, {"wrap", &wrap}};
  for (const auto& [name, value] : integers) write_attribute(path, file.get(), name, H5T_NATIVE_INT64, value);
  const std::pair<const char*, const double*> reals[] = {{"min_speed", &options.min_speed},
                                                         {"max_speed", &options.max_speed},
                                                         {"min_size", &options.min_size},
                                                         {"max_size", &options.max_size}};
  for (const auto& [name, value] : reals) write_attribute(path, file.get(), name, H5T_NATIVE_DOUBLE, value);

  const Shape video_shape{N, 3, T, H, W}, text_shape{N, L, D};
  Hdf5Id videos = create_dataset(path, file.get(), kVideos, H5T_IEEE_F32LE, video_shape, true);
  Hdf5Id texts = create_dataset(path, file.get(), kTextEmbeddings, H5T_IEEE_F32LE, text_shape, true);

  std::vector<std::string> captions(size_t(N), "");
  std::vector<float> trajectories(size_t(N * M * T * 2));   // [N, M, T, 2]
  std::vector<int32_t> objects(size_t(N * M * 3), -1);      // [N, M, 3]
  std::vector<float> motion(size_t(N * M * 5), 0.0f);       // [N, M, 5]
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  for (int64_t i = 0; i < N; ++i) {
    const ShapesSample sample = render_shapes_sample(options, seed, first + i);
    const Tensor text = encoder.encode(sample.caption);  // [L, D]
    write_rows(path, videos.get(), kVideos, H5T_NATIVE_FLOAT, video_shape, i, 1, sample.video.data<float>());
    write_rows(path, texts.get(), kTextEmbeddings, H5T_NATIVE_FLOAT, text_shape, i, 1, text.data<float>());
    captions[size_t(i)] = sample.caption;
    std::memcpy(&trajectories[size_t(i * M * T * 2)], sample.trajectory.data<float>(), size_t(M * T * 2) * 4);
    for (size_t o = 0; o < sample.objects.size(); ++o) {
      const ShapeObject& object = sample.objects[o];
      int32_t* record = &objects[size_t((i * M + int64_t(o)) * 3)];
      record[0] = int32_t(object.kind);
      record[1] = int32_t(object.colour);
      record[2] = int32_t(object.direction);
      float* m = &motion[size_t((i * M + int64_t(o)) * 5)];
      const double values[5] = {object.x0, object.y0, object.vx, object.vy, object.size};
      for (int k = 0; k < 5; ++k) m[k] = float(values[k]);
    }
    const auto now = std::chrono::steady_clock::now();
    if (show_progress && now - last_report > std::chrono::seconds(3)) {
      std::fprintf(stderr, "writing %s: %lld/%lld samples\n", path.c_str(), (long long)(i + 1), (long long)N);
      last_report = now;
    }
  }

  std::vector<const char*> caption_ptrs;
  for (const std::string& caption : captions) caption_ptrs.push_back(caption.c_str());
  Hdf5Id caption_set = create_dataset(path, file.get(), kCaptions, string_type.get(), {N}, false);
  write_rows(path, caption_set.get(), kCaptions, string_type.get(), {N}, 0, N, caption_ptrs.data());
  Hdf5Id trajectory_set = create_dataset(path, file.get(), kTrajectories, H5T_IEEE_F32LE, {N, M, T, 2}, false);
  write_rows(path, trajectory_set.get(), kTrajectories, H5T_NATIVE_FLOAT, {N, M, T, 2}, 0, N, trajectories.data());
  Hdf5Id object_set = create_dataset(path, file.get(), kObjects, H5T_STD_I32LE, {N, M, 3}, false);
  write_rows(path, object_set.get(), kObjects, H5T_NATIVE_INT32, {N, M, 3}, 0, N, objects.data());
  Hdf5Id motion_set = create_dataset(path, file.get(), kObjectMotion, H5T_IEEE_F32LE, {N, M, 5}, false);
  write_rows(path, motion_set.get(), kObjectMotion, H5T_NATIVE_FLOAT, {N, M, 5}, 0, N, motion.data());

  if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0) throw_hdf5_error(path, "cannot flush");
  if (show_progress) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "wrote %s: %lld samples in %.1f s\n", path.c_str(), (long long)N, seconds);
  }
}

void fsync_path(const std::string& path, const std::string& error_name, bool directory) {
  const int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY | O_CLOEXEC : O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (directory) return;  // best effort: the file is already in place
    REHYAT_FAIL("cannot write '{}': cannot reopen '{}' to sync it: {}", error_name, path, std::strerror(errno));
  }
  const bool ok = ::fsync(fd) == 0 || directory;
  const int sync_errno = errno;
  ::close(fd);
  REHYAT_CHECK(ok, "cannot write '{}': fsync of '{}' failed: {}", error_name, path, std::strerror(sync_errno));
}

// --- reading ---------------------------------------------------------------------------

std::optional<std::string> read_string_attribute(hid_t file, const char* name) {
  if (H5Aexists(file, name) <= 0) return std::nullopt;
  Hdf5Id attribute(H5Aopen(file, name, H5P_DEFAULT));
  Hdf5Id type(H5Aget_type(attribute.get()));
  if (!attribute.valid() || H5Tget_class(type.get()) != H5T_STRING) return std::nullopt;
  if (H5Tis_variable_str(type.get()) > 0) {
    Hdf5Id mem_type = utf8_string_type();
    char* value = nullptr;
    if (H5Aread(attribute.get(), mem_type.get(), &value) < 0 || value == nullptr) return std::nullopt;
    std::string text(value);
    H5free_memory(value);
    return text;
  }
  std::string text(H5Tget_size(type.get()), '\0');
  if (H5Aread(attribute.get(), type.get(), text.data()) < 0) return std::nullopt;
  return text.substr(0, text.find('\0'));
}

template <typename T>
T read_number_attribute(const std::string& path, hid_t file, const char* name, hid_t mem_type) {
  REHYAT_CHECK(H5Aexists(file, name) > 0, "{}: attribute '{}' missing on '/' (written by an older rehyat?)", path,
               name);
  Hdf5Id attribute(H5Aopen(file, name, H5P_DEFAULT));
  T value{};
  if (!attribute.valid() || H5Aread(attribute.get(), mem_type, &value) < 0)
    throw_hdf5_error(path, fmt::format("cannot read attribute '{}'", name));
  return value;
}

}  // namespace

void write_shapes_dataset(const std::string& path, const ShapesOptions& options, uint64_t seed, int64_t first,
                          int64_t count, const TextEncoder& encoder, bool show_progress) {
  validate_shapes_options(options);
  REHYAT_CHECK(count >= 1 && first >= 0, "cannot write '{}': need count >= 1 and first >= 0 (got {}, {})", path,
               count, first);
  REHYAT_CHECK(encoder.text_len() == options.text_len && encoder.text_dim() == options.text_dim,
               "cannot write '{}': text encoder is [{}, {}] but data options say text_len {}, text_dim {}", path,
               encoder.text_len(), encoder.text_dim(), options.text_len, options.text_dim);
  REHYAT_CHECK(max_caption_words(options) <= options.text_len,
               "cannot write '{}': captions of {} objects have up to {} words, more than text_len {}", path,
               options.max_objects, max_caption_words(options), options.text_len);
  const std::string temp_path = path + ".tmp." + std::to_string(::getpid());
  try {
    write_file(path, temp_path, options, seed, first, count, encoder, show_progress);
    fsync_path(temp_path, path, false);
    REHYAT_CHECK(std::rename(temp_path.c_str(), path.c_str()) == 0, "cannot write '{}': renaming '{}' failed: {}",
                 path, temp_path, std::strerror(errno));
  } catch (...) {
    std::remove(temp_path.c_str());
    throw;
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  fsync_path(parent.empty() ? "." : parent.string(), path, true);
}

// --- ShapesDataset ----------------------------------------------------------------------

struct ShapesDataset::State {
  std::string path;
  Hdf5Id file;
  Hdf5Id videos, texts, captions, trajectories, objects, motion;
  ShapesOptions options;
  int64_t size = 0;
  uint64_t seed = 0, text_seed = 0;
  int64_t first_index = 0;

  ~State() {
    Lock lock(shapes_hdf5_mutex());
    for (Hdf5Id* id : {&videos, &texts, &captions, &trajectories, &objects, &motion, &file}) *id = Hdf5Id();
  }

  void check_row(int64_t i) const {
    REHYAT_CHECK(i >= 0 && i < size, "{}: sample {} out of range (the dataset has {})", path, i, size);
  }

  // Reads row i of `dataset` (row shape `row_shape`) into `out`; caller holds the mutex.
  void read_row(hid_t dataset, const char* name, hid_t mem_type, const Shape& row_shape, int64_t i, void* out) const {
    check_row(i);
    Hdf5QuietErrors quiet;
    std::vector<hsize_t> start(row_shape.size() + 1, 0), count(1, 1);
    start[0] = hsize_t(i);
    for (int64_t d : row_shape) count.push_back(hsize_t(d));
    Hdf5Id file_space(H5Dget_space(dataset));
    Hdf5Id mem_space(H5Screate_simple(int(count.size()), count.data(), nullptr));
    if (H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr) < 0 ||
        H5Dread(dataset, mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, out) < 0)
      throw_hdf5_error(path, fmt::format("cannot read dataset '{}' sample {}", name, i));
  }
};

ShapesDataset ShapesDataset::open(const std::string& path) {
  Lock lock(shapes_hdf5_mutex());
  Hdf5QuietErrors quiet;
  REHYAT_CHECK(std::filesystem::exists(path), "{}: no such file", path);
  REHYAT_CHECK(is_hdf5_file(path), "{}: not an HDF5 file (expected a rehyat shapes dataset)", path);
  auto state = std::make_shared<State>();
  state->path = path;
  state->file = Hdf5Id(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!state->file.valid()) throw_hdf5_error(path, "cannot open");
  const hid_t file = state->file.get();

  const std::optional<std::string> format = read_string_attribute(file, "format");
  REHYAT_CHECK(format.has_value(), "{}: not a rehyat shapes dataset: string attribute 'format' missing on '/'", path);
  REHYAT_CHECK(*format == kShapesFormat, "{}: format '{}' is not '{}'", path, *format, kShapesFormat);

  ShapesOptions& o = state->options;
  state->seed = read_number_attribute<uint64_t>(path, file, "seed", H5T_NATIVE_UINT64);
  state->text_seed = read_number_attribute<uint64_t>(path, file, "text_seed", H5T_NATIVE_UINT64);
  state->first_index = read_number_attribute<int64_t>(path, file, "first_index", H5T_NATIVE_INT64);
  const std::pair<const char*, int64_t*> integers[] = {
      {"frames", &o.frames},           {"height", &o.height},           {"width", &o.width},
      {"min_objects", &o.min_objects}, {"max_objects", &o.max_objects}, {"text_len", &o.text_len},
      {"text_dim", &o.text_dim},       {"clear_frames", &o.clear_frames}};
  for (const auto& [name, value] : integers) *value = read_number_attribute<int64_t>(path, file, name, H5T_NATIVE_INT64);
  o.gradient_background = read_number_attribute<int64_t>(path, file, "gradient_background", H5T_NATIVE_INT64) != 0;
  // Files written before the option have no 'wrap': they did not wrap.
  o.wrap = H5Aexists(file, "wrap") > 0 && read_number_attribute<int64_t>(path, file, "wrap", H5T_NATIVE_INT64) != 0;
  const std::pair<const char*, double*> reals[] = {
      {"min_speed", &o.min_speed}, {"max_speed", &o.max_speed}, {"min_size", &o.min_size}, {"max_size", &o.max_size}};
  for (const auto& [name, value] : reals) *value = read_number_attribute<double>(path, file, name, H5T_NATIVE_DOUBLE);
  try {
    validate_shapes_options(o);
  } catch (const Error& e) {
    REHYAT_FAIL("{}: attributes on '/' are inconsistent: {}", path, e.what());
  }

  std::map<std::string, Hdf5DatasetInfo> datasets;
  for (Hdf5DatasetInfo& info : list_hdf5_datasets(path)) datasets.emplace(info.path, std::move(info));
  auto video_info = datasets.find(kVideos);
  REHYAT_CHECK(video_info != datasets.end(), "{}: dataset '{}' missing", path, kVideos);
  REHYAT_CHECK(!video_info->second.shape.empty(), "{}: dataset '{}' is a scalar", path, kVideos);
  const int64_t N = state->size = video_info->second.shape[0];
  const int64_t M = o.max_objects, T = o.frames;
  struct Expected {
    const char* name;
    Shape shape;
    std::optional<DType> dtype;  // nullopt: a string dataset
    Hdf5Id* id;
  };
  const Expected expected[] = {{kVideos, {N, 3, T, o.height, o.width}, DType::F32, &state->videos},
                               {kTextEmbeddings, {N, o.text_len, o.text_dim}, DType::F32, &state->texts},
                               {kCaptions, {N}, std::nullopt, &state->captions},
                               {kTrajectories, {N, M, T, 2}, DType::F32, &state->trajectories},
                               {kObjects, {N, M, 3}, DType::I32, &state->objects},
                               {kObjectMotion, {N, M, 5}, DType::F32, &state->motion}};
  for (const Expected& e : expected) {
    auto found = datasets.find(e.name);
    REHYAT_CHECK(found != datasets.end(), "{}: dataset '{}' missing", path, e.name);
    const Hdf5DatasetInfo& info = found->second;
    const std::string want_type = e.dtype ? dtype_name(*e.dtype) : "string";
    REHYAT_CHECK(info.shape == e.shape && info.type_name == want_type,
                 "{}: dataset '{}' is {} {}, expected {} {} (from /videos and the attributes)", path, e.name,
                 info.type_name, shape_str(info.shape), want_type, shape_str(e.shape));
    *e.id = Hdf5Id(H5Dopen2(file, e.name, H5P_DEFAULT));
    if (!e.id->valid()) throw_hdf5_error(path, fmt::format("cannot open dataset '{}'", e.name));
  }
  return ShapesDataset(std::move(state));
}

const std::string& ShapesDataset::path() const { return state_->path; }
int64_t ShapesDataset::size() const { return state_->size; }
ShapesOptions ShapesDataset::options() const { return state_->options; }
uint64_t ShapesDataset::seed() const { return state_->seed; }
uint64_t ShapesDataset::text_seed() const { return state_->text_seed; }
int64_t ShapesDataset::first_index() const { return state_->first_index; }

Tensor ShapesDataset::video(int64_t i) const {
  const ShapesOptions& o = state_->options;
  Tensor out = Tensor::empty({3, o.frames, o.height, o.width});  // [3, T, H, W]
  Lock lock(shapes_hdf5_mutex());
  state_->read_row(state_->videos.get(), kVideos, H5T_NATIVE_FLOAT, out.shape(), i, out.data<float>());
  return out;
}

Tensor ShapesDataset::text_embedding(int64_t i) const {
  const ShapesOptions& o = state_->options;
  Tensor out = Tensor::empty({o.text_len, o.text_dim});  // [text_len, text_dim]
  Lock lock(shapes_hdf5_mutex());
  state_->read_row(state_->texts.get(), kTextEmbeddings, H5T_NATIVE_FLOAT, out.shape(), i, out.data<float>());
  return out;
}

std::string ShapesDataset::caption(int64_t i) const {
  Lock lock(shapes_hdf5_mutex());
  Hdf5Id string_type = utf8_string_type();
  char* value = nullptr;
  state_->read_row(state_->captions.get(), kCaptions, string_type.get(), {}, i, &value);
  std::string caption = value ? value : "";
  H5free_memory(value);
  return caption;
}

Tensor ShapesDataset::trajectory(int64_t i) const {
  const ShapesOptions& o = state_->options;
  Tensor out = Tensor::empty({o.max_objects, o.frames, 2});  // [max_objects, T, 2]
  Lock lock(shapes_hdf5_mutex());
  state_->read_row(state_->trajectories.get(), kTrajectories, H5T_NATIVE_FLOAT, out.shape(), i, out.data<float>());
  return out;
}

std::vector<ShapeObject> ShapesDataset::objects(int64_t i) const {
  const int64_t M = state_->options.max_objects;
  std::vector<int32_t> records(size_t(M * 3));  // [M, 3]
  std::vector<float> motion(size_t(M * 5));     // [M, 5]
  {
    Lock lock(shapes_hdf5_mutex());
    state_->read_row(state_->objects.get(), kObjects, H5T_NATIVE_INT32, {M, 3}, i, records.data());
    state_->read_row(state_->motion.get(), kObjectMotion, H5T_NATIVE_FLOAT, {M, 5}, i, motion.data());
  }
  std::vector<ShapeObject> objects;
  for (int64_t o = 0; o < M; ++o) {
    const int32_t* r = &records[size_t(o * 3)];
    if (r[0] < 0) break;
    REHYAT_CHECK(r[0] < kShapeKindCount && r[1] >= 0 && r[1] < kColourCount && r[2] >= 0 && r[2] < kDirectionCount,
                 "{}: dataset '{}' sample {} object {} has invalid (kind, colour, direction) ({}, {}, {})",
                 state_->path, kObjects, i, o, r[0], r[1], r[2]);
    const float* m = &motion[size_t(o * 5)];
    objects.push_back({ShapeKind(r[0]), Colour(r[1]), Direction(r[2]), m[0], m[1], m[2], m[3], m[4]});
  }
  return objects;
}

// --- DataLoader -------------------------------------------------------------------------

namespace {
// Philox key of the loader's shuffles ("SHAPESLD"), so they draw other words than the
// renderer under the same seed.
constexpr uint64_t kShuffleKeySalt = 0x5348415045534c44ull;
}  // namespace

DataLoader::DataLoader(const ShapesDataset& dataset, int64_t batch_size, uint64_t seed, bool shuffle, int rank,
                       int world, int prefetch)
    : dataset_(dataset),
      batch_size_(batch_size),
      seed_(seed),
      shuffle_(shuffle),
      rank_(rank),
      world_(world),
      prefetch_(prefetch) {
  REHYAT_CHECK(batch_size >= 1, "DataLoader over '{}': batch_size must be >= 1 (got {})", dataset.path(),
               batch_size);
  REHYAT_CHECK(world >= 1 && rank >= 0 && rank < world, "DataLoader over '{}': rank {} is not in a world of {}",
               dataset.path(), rank, world);
  REHYAT_CHECK(prefetch >= 0, "DataLoader over '{}': prefetch must be >= 0 (got {})", dataset.path(), prefetch);
  batches_per_epoch_ = dataset.size() / world / batch_size;
  REHYAT_CHECK(batches_per_epoch_ >= 1,
               "DataLoader over '{}': {} samples cannot give each of {} ranks one batch of {}", dataset.path(),
               dataset.size(), world, batch_size);
  start_worker();
}

DataLoader::~DataLoader() { stop_worker(); }

std::vector<int64_t> DataLoader::epoch_order(int64_t epoch) const {
  const int64_t n = dataset_.size();
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  if (!shuffle_) return order;
  const uint64_t key = seed_ ^ kShuffleKeySalt, base = uint64_t(epoch) << 32;
  for (int64_t i = n - 1; i > 0; --i) {
    const uint64_t word = philox::word(key, base + uint64_t(i));
    const int64_t j = int64_t((word * uint64_t(i + 1)) >> 32);
    std::swap(order[size_t(i)], order[size_t(j)]);
  }
  return order;
}

LoaderPosition DataLoader::advance(LoaderPosition position) const {
  position.index += batch_size_;
  if (position.index >= batches_per_epoch_ * batch_size_) position = {position.epoch + 1, 0};
  return position;
}

Batch DataLoader::load(const LoaderPosition& position, Shard& shard) const {
  if (shard.epoch != position.epoch) {
    const std::vector<int64_t> order = epoch_order(position.epoch);
    shard.rows.clear();
    for (int64_t k = 0; k < batches_per_epoch_ * batch_size_; ++k) shard.rows.push_back(order[size_t(rank_ + k * world_)]);
    shard.epoch = position.epoch;
  }
  const ShapesOptions o = dataset_.options();
  Batch batch;
  batch.videos = Tensor::empty({batch_size_, 3, o.frames, o.height, o.width});  // [B, 3, T, H, W]
  batch.text = Tensor::empty({batch_size_, o.text_len, o.text_dim});            // [B, text_len, text_dim]
  const int64_t video_numel = 3 * o.frames * o.height * o.width, text_numel = o.text_len * o.text_dim;
  for (int64_t b = 0; b < batch_size_; ++b) {
    const int64_t row = shard.rows[size_t(position.index + b)];
    batch.indices.push_back(row);
    std::memcpy(batch.videos.data<float>() + b * video_numel, dataset_.video(row).data<float>(),
                size_t(video_numel) * sizeof(float));
    std::memcpy(batch.text.data<float>() + b * text_numel, dataset_.text_embedding(row).data<float>(),
                size_t(text_numel) * sizeof(float));
  }
  return batch;
}

void DataLoader::start_worker() {
  producer_ = consumer_;
  stopping_ = false;
  queue_.clear();
  if (prefetch_ > 0) worker_ = std::thread(&DataLoader::worker_loop, this);
}

void DataLoader::stop_worker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void DataLoader::worker_loop() {
  Shard shard;
  for (;;) {
    LoaderPosition position;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || int64_t(queue_.size()) < prefetch_; });
      if (stopping_) return;
      position = producer_;
    }
    Item item;
    try {
      item.batch = load(position, shard);
    } catch (...) {
      item.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      const bool failed = item.error != nullptr;
      queue_.push_back(std::move(item));
      producer_ = advance(position);
      changed_.notify_all();
      if (failed) return;
    }
  }
}

Batch DataLoader::next() {
  if (prefetch_ == 0) {
    Batch batch = load(consumer_, consumer_shard_);
    consumer_ = advance(consumer_);
    return batch;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty(); });
  if (queue_.front().error) std::rethrow_exception(queue_.front().error);
  Batch batch = std::move(queue_.front().batch);
  queue_.pop_front();
  consumer_ = advance(consumer_);
  changed_.notify_all();
  return batch;
}

LoaderPosition DataLoader::position() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return consumer_;
}

void DataLoader::set_position(const LoaderPosition& position) {
  REHYAT_CHECK(position.epoch >= 0 && position.index >= 0 && position.index % batch_size_ == 0 &&
                   position.index <= batches_per_epoch_ * batch_size_,
               "DataLoader over '{}': cannot resume at epoch {} sample {} (need a multiple of batch_size {} in "
               "[0, {}])",
               dataset_.path(), position.epoch, position.index, batch_size_, batches_per_epoch_ * batch_size_);
  stop_worker();
  consumer_ = position.index == batches_per_epoch_ * batch_size_ ? LoaderPosition{position.epoch + 1, 0} : position;
  start_worker();
}

}  // namespace rehyat::data
