// Shapes rendering and detection. Rendering draws every random choice of sample `index`
// from its own block of Philox words (key = seed, counters index * kWordsPerSample + k),
// so samples are independent of each other and of the order they are rendered in.
// Coverage is 4x4 supersampled per pixel and composited largest object first. Only +, -,
// *, / and fmod touch the geometry, so the bytes do not depend on the machine's libm (the
// detector, which renders nothing, may use sqrt and the trigonometric functions).
//
// Wrapped frames (ShapesOptions::wrap) draw each object once: a subsample's offset from the
// centre is taken the short way round the torus (minimum_image), which is the union of the
// object's copies shifted by multiples of (W, H) because an object is narrower than half
// the frame (validate_shapes_options: 2 max_size < min(H, W)), so no two copies reach one
// pixel and its coverage is anti-aliased exactly like an object inside the frame.
#include "data/shapes.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "core/check.h"
#include "core/philox.h"

namespace rehyat::data {

namespace {

constexpr const char* kShapeKindNames[kShapeKindCount] = {"circle", "square", "triangle"};
constexpr const char* kColourNames[kColourCount] = {"red", "green", "blue", "yellow"};
constexpr const char* kDirectionNames[kDirectionCount] = {"left", "right", "up", "down"};
constexpr int64_t kMaxObjects = 3;

template <typename Enum, size_t N>
Enum enum_from_name(const std::string& name, const char* const (&names)[N], const char* what) {
  for (size_t i = 0; i < N; ++i)
    if (name == names[i]) return Enum(i);
  REHYAT_FAIL("unknown {} '{}' (expected one of: {})", what, name, fmt::join(names, names + N, ", "));
}

// --- per-sample random choices ---------------------------------------------------------

// Placements tried per object to keep it clear of the earlier ones (see
// render_shapes_sample).
constexpr int kPlacementAttempts = 16;
constexpr int64_t kClearFrames = 3;

constexpr uint64_t kWordsPerSample = 128;
// Word layout inside a sample's block.
constexpr uint64_t kWordObjectCount = 0;
constexpr uint64_t kWordColourShuffle = 1;  // 3 words
constexpr uint64_t kWordBackground = 4;     // 3 words
constexpr uint64_t kWordObjects = 8;        // per object: kind, direction, speed, size, 2 per placement
constexpr uint64_t kWordsPerObject = 4 + 2 * kPlacementAttempts;
static_assert(kWordObjects + 3 * kWordsPerObject <= kWordsPerSample);

class SampleRandom {
 public:
  SampleRandom(uint64_t seed, int64_t index) : seed_(seed), base_(uint64_t(index) * kWordsPerSample) {}
  // Uniform in [0, 1) with 32 random bits.
  double uniform(uint64_t k) const { return double(philox::word(seed_, base_ + k)) * (1.0 / 4294967296.0); }
  double uniform(uint64_t k, double low, double high) const { return low + (high - low) * uniform(k); }
  // Uniform integer in [0, n).
  int64_t below(uint64_t k, int64_t n) const {
    return int64_t((uint64_t(philox::word(seed_, base_ + k)) * uint64_t(n)) >> 32);
  }

 private:
  uint64_t seed_;
  uint64_t base_;
};

// Reflects p into [low, high] as a point bouncing between the two walls would be.
double bounce(double p, double low, double high) {
  const double span = high - low;
  double m = wrap_coordinate(p - low, 2.0 * span);
  if (m > span) m = 2.0 * span - m;
  return low + m;
}

// Pixels along one axis that a shape centred at c reaching `size` either side can cover
// (its bounding box and a pixel of margin): indices first .. first + count - 1, clipped to
// the frame, or with wrap taken mod extent (count <= extent: no pixel twice).
struct PixelSpan {
  int64_t first, count;
  int64_t index(int64_t k, int64_t extent, bool wrap) const {
    return wrap ? ((first + k) % extent + extent) % extent : first + k;
  }
};

PixelSpan pixel_span(double c, double size, int64_t extent, bool wrap) {
  if (!wrap) {
    const int64_t first = std::max<int64_t>(0, int64_t(c - size) - 1);
    return {first, std::min<int64_t>(extent, int64_t(c + size) + 2) - first};
  }
  // c is in [0, extent) and size < extent / 2, so c - size + extent > 0 truncates like floor.
  const int64_t first = int64_t(c - size + double(extent)) - 1 - extent;
  return {first, std::min<int64_t>(extent, int64_t(c + size) + 2 - first)};
}

// Equilateral triangle pointing up, inscribed in the circle of radius `size`: its
// centroid is the centre.
constexpr double kHalfSqrt3 = 0.8660254037844386;

bool inside(ShapeKind kind, double size, double dx, double dy) {
  switch (kind) {
    case ShapeKind::Circle: return dx * dx + dy * dy <= size * size;
    case ShapeKind::Square: return std::abs(dx) <= size && std::abs(dy) <= size;
    case ShapeKind::Triangle: {
      if (dy > 0.5 * size) return false;
      // Slanted edges from the apex (0, -size) to (-+size*sqrt(3)/2, size/2): |dx| grows
      // by sqrt(3)/2 / 1.5 = 1/sqrt(3) per unit of dy below the apex.
      return std::abs(dx) * 1.5 <= (dy + size) * kHalfSqrt3;
    }
  }
  return false;
}

double shape_area(const ShapeObject& object) {
  const double factor[kShapeKindCount] = {3.141592653589793, 4.0, 3.0 * kHalfSqrt3 / 2.0};
  return factor[int(object.kind)] * object.size * object.size;
}

// Background grey level of pixel (row, col): plain, or a linear ramp between two dark
// greys along one of four directions (horizontal, vertical, both diagonals).
struct Background {
  bool gradient;
  double level0, level1;
  int orientation;
  double at(int64_t row, int64_t col, int64_t height, int64_t width) const {
    if (!gradient) return level0;
    const double u = (double(col) + 0.5) / double(width), v = (double(row) + 0.5) / double(height);
    const double ramp[4] = {u, v, 0.5 * (u + v), 0.5 * (u + 1.0 - v)};
    return level0 + (level1 - level0) * ramp[orientation];
  }
};

}  // namespace

std::string shape_kind_name(ShapeKind kind) { return kShapeKindNames[int(kind)]; }
std::string colour_name(Colour colour) { return kColourNames[int(colour)]; }
std::string direction_name(Direction direction) { return kDirectionNames[int(direction)]; }
ShapeKind shape_kind_from_name(const std::string& name) {
  return enum_from_name<ShapeKind>(name, kShapeKindNames, "shape");
}
Colour colour_from_name(const std::string& name) { return enum_from_name<Colour>(name, kColourNames, "colour"); }
Direction direction_from_name(const std::string& name) {
  return enum_from_name<Direction>(name, kDirectionNames, "direction");
}

Rgb colour_rgb(Colour colour) {
  switch (colour) {
    case Colour::Red: return {0.9f, -0.9f, -0.9f};
    case Colour::Green: return {-0.9f, 0.9f, -0.9f};
    case Colour::Blue: return {-0.9f, -0.9f, 0.9f};
    case Colour::Yellow: return {0.9f, 0.9f, -0.9f};
  }
  return {0, 0, 0};
}

void validate_shapes_options(const ShapesOptions& o) {
  REHYAT_CHECK(o.frames >= 1 && o.height >= 1 && o.width >= 1,
               "data: frames, height and width must be positive (got {}, {}, {})", o.frames, o.height, o.width);
  REHYAT_CHECK(o.min_objects >= 1 && o.min_objects <= o.max_objects && o.max_objects <= kMaxObjects,
               "data: need 1 <= min_objects <= max_objects <= {} (got {}, {})", kMaxObjects, o.min_objects,
               o.max_objects);
  REHYAT_CHECK(o.min_speed > 0 && o.min_speed <= o.max_speed,
               "data: need 0 < min_speed <= max_speed (got {}, {})", o.min_speed, o.max_speed);
  REHYAT_CHECK(o.clear_frames >= 1, "data: clear_frames must be at least 1 (got {})", o.clear_frames);
  REHYAT_CHECK(o.min_size > 0 && o.min_size <= o.max_size, "data: need 0 < min_size <= max_size (got {}, {})",
               o.min_size, o.max_size);
  REHYAT_CHECK(2.0 * o.max_size < double(std::min(o.height, o.width)),
               "data: max_size {} does not fit a {}x{} frame (objects need 2*max_size < min(height, width))",
               o.max_size, o.height, o.width);
  REHYAT_CHECK(o.text_len >= 1 && o.text_dim >= 1, "data: text_len and text_dim must be positive (got {}, {})",
               o.text_len, o.text_dim);
}

int64_t max_caption_words(const ShapesOptions& options) { return 6 * options.max_objects - 1; }

double wrap_coordinate(double p, double extent) {
  double m = std::fmod(p, extent);
  if (m < 0) m += extent;
  return m < extent ? m : 0.0;  // -tiny + extent rounds to extent, which is 0 again
}

double minimum_image(double d, double extent) { return wrap_coordinate(d + 0.5 * extent, extent) - 0.5 * extent; }

std::pair<double, double> object_centre(const ShapeObject& object, const ShapesOptions& options, int64_t frame) {
  const double t = double(frame);
  if (options.wrap)
    return {wrap_coordinate(object.x0 + object.vx * t, double(options.width)),
            wrap_coordinate(object.y0 + object.vy * t, double(options.height))};
  return {bounce(object.x0 + object.vx * t, object.size, double(options.width) - object.size),
          bounce(object.y0 + object.vy * t, object.size, double(options.height) - object.size)};
}

std::string shapes_caption(const std::vector<ShapeObject>& objects) {
  std::string caption;
  for (const ShapeObject& object : objects) {
    if (!caption.empty()) caption += " and ";
    caption += fmt::format("a {} {} moving {}", colour_name(object.colour), shape_kind_name(object.kind),
                           direction_name(object.direction));
  }
  return caption;
}

ShapesSample render_shapes_sample(const ShapesOptions& options, uint64_t seed, int64_t index) {
  validate_shapes_options(options);
  REHYAT_CHECK(index >= 0, "shapes sample index must be >= 0 (got {})", index);
  const SampleRandom random(seed, index);
  const int64_t T = options.frames, H = options.height, W = options.width;

  const int64_t count = options.min_objects + random.below(kWordObjectCount, options.max_objects -
                                                                                  options.min_objects + 1);
  int colours[kColourCount] = {0, 1, 2, 3};
  for (int i = kColourCount - 1; i > 0; --i)
    std::swap(colours[i], colours[random.below(kWordColourShuffle + uint64_t(kColourCount - 1 - i), i + 1)]);

  const Background background =
      options.gradient_background
          ? Background{true, random.uniform(kWordBackground, -0.9, -0.5), random.uniform(kWordBackground + 1, -0.9, -0.5),
                       int(random.below(kWordBackground + 2, 4))}
          : Background{false, random.uniform(kWordBackground, -0.85, -0.55), 0.0, 0};

  ShapesSample sample;
  for (int64_t o = 0; o < count; ++o) {
    const uint64_t k = kWordObjects + uint64_t(o) * kWordsPerObject;
    ShapeObject object{};
    object.kind = ShapeKind(random.below(k, kShapeKindCount));
    object.colour = Colour(colours[o]);
    object.direction = Direction(random.below(k + 1, kDirectionCount));
    const double speed = random.uniform(k + 2, options.min_speed, options.max_speed);
    object.size = random.uniform(k + 3, options.min_size, options.max_size);
    const bool horizontal = object.direction == Direction::Left || object.direction == Direction::Right;
    const bool negative = object.direction == Direction::Left || object.direction == Direction::Up;
    const double along_extent = double(horizontal ? W : H), across_extent = double(horizontal ? H : W);
    object.vx = horizontal ? (negative ? -speed : speed) : 0.0;
    object.vy = horizontal ? 0.0 : (negative ? -speed : speed);
    // Room before the first bounce: clear_frames frames of motion and at least 1.5 px, so
    // the starting direction shows; capped by the free span. Wrapped frames have no walls:
    // starts are uniform over the frame, so no frame tells the direction by position.
    const double low = object.size, high = along_extent - object.size;
    const double room = std::min(high - low, std::max(double(options.clear_frames) * speed, 1.5));
    // Of kPlacementAttempts start positions, the one whose bounding box overlaps the
    // earlier objects' least over the video, overlap in the first kClearFrames frames
    // (where the detector reads the direction) counting 4 times; on a torus the distances
    // are minimum-image ones.
    ShapeObject best = object;
    double best_overlap = std::numeric_limits<double>::infinity();
    for (int attempt = 0; attempt < kPlacementAttempts && best_overlap > 0; ++attempt) {
      const uint64_t w = k + 4 + 2 * uint64_t(attempt);
      const double along = options.wrap ? random.uniform(w, 0.0, along_extent)
                           : negative   ? random.uniform(w, low + room, high)
                                        : random.uniform(w, low, high - room);
      const double across = options.wrap ? random.uniform(w + 1, 0.0, across_extent)
                                         : random.uniform(w + 1, object.size, across_extent - object.size);
      object.x0 = horizontal ? along : across;
      object.y0 = horizontal ? across : along;
      double overlap = 0;
      for (int64_t t = 0; t < T; ++t) {
        const auto [x, y] = object_centre(object, options, t);
        for (const ShapeObject& other : sample.objects) {
          const auto [ox, oy] = object_centre(other, options, t);
          const double reach = object.size + other.size;
          const double dx = options.wrap ? minimum_image(x - ox, double(W)) : x - ox;
          const double dy = options.wrap ? minimum_image(y - oy, double(H)) : y - oy;
          const double area = std::max(0.0, reach - std::abs(dx)) * std::max(0.0, reach - std::abs(dy));
          // Wrapped data weighs every frame alike, so that pairs of objects are as likely to
          // overlap in one frame as in any other (stationary, like the positions themselves).
          overlap += (t < kClearFrames && !options.wrap ? 4.0 : 1.0) * area;
        }
      }
      if (overlap < best_overlap) {
        best = object;
        best_overlap = overlap;
      }
    }
    sample.objects.push_back(best);
  }
  sample.caption = shapes_caption(sample.objects);

  // Larger objects are drawn first, so a small one passing in front stays visible.
  std::vector<size_t> draw_order(sample.objects.size());
  for (size_t o = 0; o < draw_order.size(); ++o) draw_order[o] = o;
  std::stable_sort(draw_order.begin(), draw_order.end(), [&](size_t a, size_t b) {
    return shape_area(sample.objects[a]) > shape_area(sample.objects[b]);
  });

  sample.video = Tensor::empty({3, T, H, W});
  float* video = sample.video.data<float>();  // [3, T, H, W]
  const int64_t plane = T * H * W;
  sample.trajectory = Tensor::full({options.max_objects, T, 2}, std::numeric_limits<double>::quiet_NaN());
  float* trajectory = sample.trajectory.data<float>();  // [max_objects, T, 2]

  constexpr int kSub = 4;  // supersampling per axis
  for (int64_t t = 0; t < T; ++t) {
    float* frame = video + t * H * W;
    for (int64_t i = 0; i < H; ++i)
      for (int64_t j = 0; j < W; ++j) {
        const float grey = float(background.at(i, j, H, W));
        for (int c = 0; c < 3; ++c) frame[c * plane + i * W + j] = grey;
      }
    for (size_t o : draw_order) {
      const ShapeObject& object = sample.objects[o];
      const auto [cx, cy] = object_centre(object, options, t);
      trajectory[(int64_t(o) * T + t) * 2] = float(cx);
      trajectory[(int64_t(o) * T + t) * 2 + 1] = float(cy);
      const Rgb rgb = colour_rgb(object.colour);
      const float colour[3] = {rgb.r, rgb.g, rgb.b};
      const PixelSpan rows = pixel_span(cy, object.size, H, options.wrap);
      const PixelSpan cols = pixel_span(cx, object.size, W, options.wrap);
      for (int64_t ki = 0; ki < rows.count; ++ki)
        for (int64_t kj = 0; kj < cols.count; ++kj) {
          const int64_t i = rows.index(ki, H, options.wrap), j = cols.index(kj, W, options.wrap);
          int hits = 0;
          for (int si = 0; si < kSub; ++si)
            for (int sj = 0; sj < kSub; ++sj) {
              const double x = double(j) + (sj + 0.5) / kSub, y = double(i) + (si + 0.5) / kSub;
              const double dx = options.wrap ? minimum_image(x - cx, double(W)) : x - cx;
              const double dy = options.wrap ? minimum_image(y - cy, double(H)) : y - cy;
              hits += inside(object.kind, object.size, dx, dy);
            }
          if (hits == 0) continue;
          const float alpha = float(hits) / float(kSub * kSub);
          for (int c = 0; c < 3; ++c) {
            float& p = frame[c * plane + i * W + j];
            p = p + alpha * (colour[c] - p);
          }
        }
    }
  }
  return sample;
}

// --- detector -------------------------------------------------------------------------

namespace {

// Centroid along a wrapped axis of the membership `mass` of each pixel on it. The circular
// mean (pixel k at angle 2 pi (k + 0.5) / extent) finds the object whichever edges split
// it; the mean of the minimum-image offsets from there is then the object's plain centroid
// as if drawn unsplit, exact for objects narrower than half the axis (the renderer's), where
// the circular mean alone is pulled towards the middle of an asymmetric shape (triangle).
double circular_centroid(const std::vector<double>& mass) {
  constexpr double kTwoPi = 6.283185307179586;
  const double extent = double(mass.size());
  double sine = 0, cosine = 0, total = 0;
  for (size_t k = 0; k < mass.size(); ++k) {
    const double angle = kTwoPi * (double(k) + 0.5) / extent;
    sine += mass[k] * std::sin(angle);
    cosine += mass[k] * std::cos(angle);
    total += mass[k];
  }
  const double around = wrap_coordinate(std::atan2(sine, cosine) / kTwoPi * extent, extent);
  double offset = 0;
  for (size_t k = 0; k < mass.size(); ++k) offset += mass[k] * minimum_image(double(k) + 0.5 - around, extent);
  return wrap_coordinate(around + offset / total, extent);
}

// Pixels in the largest 4-connected group of `member` [H, W] (neighbours across the edges
// when wrapped).
int64_t largest_group(const std::vector<uint8_t>& member, int64_t H, int64_t W, bool wrap) {
  std::vector<uint8_t> seen(member.size(), 0);
  std::vector<int64_t> stack;
  int64_t largest = 0;
  for (int64_t start = 0; start < H * W; ++start) {
    if (!member[size_t(start)] || seen[size_t(start)]) continue;
    int64_t size = 0;
    seen[size_t(start)] = 1;
    stack.assign(1, start);
    while (!stack.empty()) {
      const int64_t p = stack.back();
      stack.pop_back();
      ++size;
      const int64_t i = p / W, j = p % W;
      const int64_t di[] = {-1, 1, 0, 0}, dj[] = {0, 0, -1, 1};
      for (int k = 0; k < 4; ++k) {
        int64_t ni = i + di[k], nj = j + dj[k];
        if (wrap) {
          ni = (ni + H) % H;
          nj = (nj + W) % W;
        } else if (ni < 0 || ni >= H || nj < 0 || nj >= W) {
          continue;
        }
        const int64_t q = ni * W + nj;
        if (member[size_t(q)] && !seen[size_t(q)]) {
          seen[size_t(q)] = 1;
          stack.push_back(q);
        }
      }
    }
    largest = std::max(largest, size);
  }
  return largest;
}

}  // namespace

std::vector<ObjectTrack> detect_objects(const Tensor& video, bool wrap) {
  REHYAT_CHECK(video.dim() == 4 && video.size(0) == 3, "detect_objects: video must be [3, T, H, W], got {}",
               shape_str(video.shape()));
  const Tensor host = video.detach().to(Device::cpu()).to(DType::F32).contiguous();
  const float* data = host.data<float>();  // [3, T, H, W]
  const int64_t T = host.size(1), H = host.size(2), W = host.size(3), plane = T * H * W;

  std::vector<ObjectTrack> tracks;
  for (int c = 0; c < kColourCount; ++c) {
    const Rgb rgb = colour_rgb(Colour(c));
    ObjectTrack track{Colour(c), Tensor::full({T, 2}, std::numeric_limits<double>::quiet_NaN()), 0};
    float* centres = track.centres.data<float>();  // [T, 2]
    std::vector<double> column_mass, row_mass;      // [W], [H] membership per column / row (wrap)
    std::vector<uint8_t> member(size_t(H * W));
    for (int64_t t = 0; t < T; ++t) {
      double weight = 0, wx = 0, wy = 0;
      int64_t members = 0;
      std::fill(member.begin(), member.end(), 0);
      if (wrap) {
        column_mass.assign(size_t(W), 0.0);
        row_mass.assign(size_t(H), 0.0);
      }
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          const int64_t p = t * H * W + i * W + j;
          const double dr = data[p] - rgb.r, dg = data[plane + p] - rgb.g, db = data[2 * plane + p] - rgb.b;
          const double distance = std::sqrt(dr * dr + dg * dg + db * db);
          if (distance >= kDetectorColourDistance) continue;
          const double membership = 1.0 - distance / kDetectorColourDistance;
          ++members;
          member[size_t(i * W + j)] = 1;
          weight += membership;
          if (wrap) {
            column_mass[size_t(j)] += membership;
            row_mass[size_t(i)] += membership;
            continue;
          }
          wx += membership * (double(j) + 0.5);
          wy += membership * (double(i) + 0.5);
        }
      // An object is a blob: noise (an untrained model's output, say) has pixels of every
      // colour, but scattered.
      if (members < kDetectorMinPixels || largest_group(member, H, W, wrap) < kDetectorMinPixels) continue;
      centres[t * 2] = float(wrap ? circular_centroid(column_mass) : wx / weight);
      centres[t * 2 + 1] = float(wrap ? circular_centroid(row_mass) : wy / weight);
      ++track.found_frames;
    }
    if (2 * track.found_frames >= T) tracks.push_back(std::move(track));
  }
  return tracks;
}

std::optional<Direction> motion_direction(const ObjectTrack& track, bool wrap, int64_t width, int64_t height) {
  REHYAT_CHECK(!wrap || (width > 0 && height > 0),
               "motion_direction: a wrapped track needs the frame's width and height (got {} x {})", width, height);
  const Tensor host = track.centres.to(Device::cpu()).contiguous();
  const float* centres = host.data<float>();  // [T, 2]
  std::vector<std::pair<double, double>> found;
  for (int64_t t = 0; t < host.size(0); ++t)
    if (!std::isnan(centres[t * 2])) found.emplace_back(centres[t * 2], centres[t * 2 + 1]);
  if (found.size() < 2) return std::nullopt;
  // A wrapped centre jumps by about the frame size where the object crosses an edge: unwrap
  // the path (each step the short way round), then read it like a plain one.
  if (wrap)
    for (size_t k = 1; k < found.size(); ++k) {
      found[k].first = found[k - 1].first + minimum_image(found[k].first - found[k - 1].first, double(width));
      found[k].second = found[k - 1].second + minimum_image(found[k].second - found[k - 1].second, double(height));
    }

  double path_x = 0, path_y = 0;
  for (size_t k = 1; k < found.size(); ++k) {
    path_x += std::abs(found[k].first - found[k - 1].first);
    path_y += std::abs(found[k].second - found[k - 1].second);
  }
  const bool horizontal = path_x >= path_y;
  constexpr double kMinMotion = 1.0;  // pixels
  for (size_t k = 1; k < found.size(); ++k) {
    const double d = horizontal ? found[k].first - found[0].first : found[k].second - found[0].second;
    if (std::abs(d) < kMinMotion) continue;
    if (horizontal) return d < 0 ? Direction::Left : Direction::Right;
    return d < 0 ? Direction::Up : Direction::Down;
  }
  return std::nullopt;
}

PromptAgreement prompt_agreement(const Tensor& video, const std::vector<ShapeObject>& objects, bool wrap) {
  const std::vector<ObjectTrack> tracks = detect_objects(video, wrap);
  PromptAgreement agreement{true, true, true, {}};
  for (const ShapeObject& object : objects) {
    const std::string name = colour_name(object.colour) + " " + shape_kind_name(object.kind);
    auto track = std::find_if(tracks.begin(), tracks.end(),
                              [&](const ObjectTrack& candidate) { return candidate.colour == object.colour; });
    if (track == tracks.end()) {
      agreement.colours_ok = agreement.motion_ok = false;
      agreement.problems.push_back(name + ": colour not found");
      continue;
    }
    const std::optional<Direction> direction = motion_direction(*track, wrap, video.size(3), video.size(2));
    if (direction != object.direction) {
      agreement.motion_ok = false;
      agreement.problems.push_back(fmt::format("{}: {}, caption says {}", name,
                                               direction ? "moves " + direction_name(*direction) : "does not move",
                                               direction_name(object.direction)));
    }
  }
  agreement.all_ok = agreement.colours_ok && agreement.motion_ok;
  return agreement;
}

}  // namespace rehyat::data
