// The shapes dataset: rendering is deterministic and in range, captions say what is drawn,
// the detector recovers colours and starting directions (also under noise) and the
// ground-truth centres; wrapped frames (ShapesOptions::wrap) draw objects across the
// edges, keep every frame's position distribution the same and are read back by the
// detector; the text encoder is seeded, padded and strict; the HDF5 file round-trips and
// its schema errors name the file; the loader visits every sample once per epoch, shards
// disjointly, resumes exactly and prefetches without changing batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "data/hdf5_file.h"
#include "data/shapes.h"
#include "data/shapes_dataset.h"
#include "data/text_encoder.h"
#include "temp_dir.h"

namespace rehyat::data {
namespace {

using testing::error_message;
using testing::expect_contains;
using testing::TempDir;

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() && std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

std::vector<float> values(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

TEST(Shapes, NamesRoundTrip) {
  for (int i = 0; i < kShapeKindCount; ++i) EXPECT_EQ(int(shape_kind_from_name(shape_kind_name(ShapeKind(i)))), i);
  for (int i = 0; i < kColourCount; ++i) EXPECT_EQ(int(colour_from_name(colour_name(Colour(i)))), i);
  for (int i = 0; i < kDirectionCount; ++i) EXPECT_EQ(int(direction_from_name(direction_name(Direction(i)))), i);
  EXPECT_EQ(colour_name(Colour::Yellow), "yellow");
  EXPECT_EQ(direction_name(Direction::Up), "up");
  expect_contains(error_message([] { colour_from_name("purple"); }), {"purple", "red", "yellow"});
}

TEST(Shapes, RenderIsDeterministic) {
  const ShapesOptions options;
  const ShapesSample a = render_shapes_sample(options, 7, 3), b = render_shapes_sample(options, 7, 3);
  EXPECT_TRUE(same_bytes(a.video, b.video));
  EXPECT_EQ(a.caption, b.caption);
  EXPECT_EQ(std::memcmp(a.trajectory.data_ptr(), b.trajectory.data_ptr(), a.trajectory.nbytes()), 0);
  EXPECT_FALSE(same_bytes(a.video, render_shapes_sample(options, 7, 4).video));
  EXPECT_FALSE(same_bytes(a.video, render_shapes_sample(options, 8, 3).video));
}

TEST(Shapes, ValuesShapesAndObjects) {
  ShapesOptions options;
  options.max_objects = 3;
  options.frames = 5;
  options.height = 20;
  options.width = 24;
  std::set<int64_t> counts;
  for (int64_t index = 0; index < 100; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 1, index);
    ASSERT_EQ(sample.video.shape(), (Shape{3, 5, 20, 24}));
    for (float v : values(sample.video)) ASSERT_TRUE(v >= -1.0f && v <= 1.0f) << v;
    const int64_t n = int64_t(sample.objects.size());
    counts.insert(n);
    ASSERT_TRUE(n >= 1 && n <= 3);
    std::set<Colour> colours;
    for (const ShapeObject& o : sample.objects) colours.insert(o.colour);
    EXPECT_EQ(int64_t(colours.size()), n) << "colours repeat in sample " << index;
    ASSERT_EQ(sample.trajectory.shape(), (Shape{3, 5, 2}));
    const std::vector<float> trajectory = values(sample.trajectory);
    for (int64_t o = 0; o < 3; ++o)
      for (int64_t k = 0; k < 5 * 2; ++k) EXPECT_EQ(std::isnan(trajectory[size_t(o * 10 + k)]), o >= n);
  }
  EXPECT_EQ(counts, (std::set<int64_t>{1, 2, 3}));
}

TEST(Shapes, CaptionNamesTheObjects) {
  const ShapesOptions options;
  for (int64_t index = 0; index < 50; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 2, index);
    const std::vector<std::string> words = caption_words(sample.caption);
    ASSERT_EQ(words.size(), sample.objects.size() * 6 - 1) << sample.caption;
    for (size_t o = 0; o < sample.objects.size(); ++o) {
      const ShapeObject& object = sample.objects[o];
      const size_t w = o * 6;
      EXPECT_EQ(words[w], "a");
      EXPECT_EQ(colour_from_name(words[w + 1]), object.colour) << sample.caption;
      EXPECT_EQ(shape_kind_from_name(words[w + 2]), object.kind) << sample.caption;
      EXPECT_EQ(words[w + 3], "moving");
      EXPECT_EQ(direction_from_name(words[w + 4]), object.direction) << sample.caption;
      if (o + 1 < sample.objects.size()) {
        EXPECT_EQ(words[w + 5], "and");
      }
    }
  }
  EXPECT_EQ(shapes_caption({{ShapeKind::Circle, Colour::Red, Direction::Left, 5, 5, -1, 0, 3},
                            {ShapeKind::Square, Colour::Blue, Direction::Up, 5, 5, 0, -1, 3}}),
            "a red circle moving left and a blue square moving up");
}

TEST(Shapes, MotionIsAxisAlignedAndBounces) {
  const ShapesOptions options;
  int bounced = 0;
  for (int64_t index = 0; index < 100; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 3, index);
    for (const ShapeObject& o : sample.objects) {
      const double speed = std::abs(o.vx) + std::abs(o.vy);
      EXPECT_TRUE(o.vx == 0 || o.vy == 0);
      EXPECT_TRUE(speed >= options.min_speed && speed <= options.max_speed);
      double previous_step = 0;
      for (int64_t t = 0; t < options.frames; ++t) {
        const auto [x, y] = object_centre(o, options, t);
        EXPECT_TRUE(x >= o.size - 1e-9 && x <= double(options.width) - o.size + 1e-9);
        EXPECT_TRUE(y >= o.size - 1e-9 && y <= double(options.height) - o.size + 1e-9);
        if (t == 0) continue;
        const auto [px, py] = object_centre(o, options, t - 1);
        const double step = o.vx != 0 ? x - px : y - py;
        EXPECT_LE(std::abs(step), speed + 1e-9);
        if (t >= 2 && step * previous_step < 0) ++bounced;
        if (t == 1) {
          EXPECT_NEAR(step, o.vx != 0 ? o.vx : o.vy, 1e-9);  // room before the first bounce
        }
        previous_step = step;
      }
    }
  }
  EXPECT_GT(bounced, 10);
}

// The data of configs/shapes-h100.yaml without bounces: 13 frames of 32x32, 0.8-1.4 px
// per frame, sizes 4-6.5, clear_frames = frames - 1.
ShapesOptions shapes_h100_options() {
  ShapesOptions options;
  options.frames = 13;
  options.height = options.width = 32;
  options.min_speed = 0.8;
  options.max_speed = 1.4;
  options.min_size = 4.0;
  options.max_size = 6.5;
  options.clear_frames = options.frames - 1;  // 12 * 1.4 = 16.8 px <= 32 - 2 * 6.5
  return options;
}

// clear_frames = frames - 1 with a path that fits the free span: no object bounces, so
// every object moves the captioned way in every frame (what the shapes-h100 teacher
// learns from).
TEST(Shapes, ClearFramesKeepsTheWholeClipFreeOfBounces) {
  ShapesOptions options = shapes_h100_options();
  for (int64_t index = 0; index < 200; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 4, index);
    for (const ShapeObject& o : sample.objects)
      for (int64_t t = 1; t < options.frames; ++t) {
        const auto [x, y] = object_centre(o, options, t);
        const auto [px, py] = object_centre(o, options, t - 1);
        ASSERT_NEAR(x - px, o.vx, 1e-9) << sample.caption << " frame " << t;
        ASSERT_NEAR(y - py, o.vy, 1e-9) << sample.caption << " frame " << t;
      }
  }
  options.clear_frames = 0;
  EXPECT_THROW(validate_shapes_options(options), Error);
}

// True when some object of `sample` crosses an edge of a wrapped frame between two frames
// (its stored centre jumps by more than half the frame).
bool crosses_an_edge(const ShapesSample& sample, const ShapesOptions& options) {
  const std::vector<float> trajectory = values(sample.trajectory);  // [M, T, 2]
  const int64_t T = options.frames;
  for (size_t o = 0; o < sample.objects.size(); ++o)
    for (int64_t t = 1; t < T; ++t) {
      const float* now = &trajectory[size_t((int64_t(o) * T + t) * 2)];
      if (std::abs(now[0] - now[-2]) > 0.5 * double(options.width) ||
          std::abs(now[1] - now[-1]) > 0.5 * double(options.height))
        return true;
    }
  return false;
}

// With wrap a centre is (start + v t) mod (W, H): it leaves at one edge and comes back at the
// opposite one, every frame moves it by v the short way round, and the trajectory stores the
// wrapped centres. Renders stay a function of the seed.
TEST(Shapes, WrapCentresGoRoundTheFrame) {
  ShapesOptions options;  // 16 x 16
  options.wrap = true;
  const ShapeObject right{ShapeKind::Circle, Colour::Red, Direction::Right, 14.5, 3.0, 1.25, 0.0, 3.0};
  const ShapeObject up{ShapeKind::Square, Colour::Blue, Direction::Up, 8.0, 1.0, 0.0, -0.75, 3.0};
  EXPECT_EQ(object_centre(right, options, 1), (std::pair<double, double>{15.75, 3.0}));
  EXPECT_EQ(object_centre(right, options, 2), (std::pair<double, double>{1.0, 3.0}));    // 17 - 16
  EXPECT_EQ(object_centre(right, options, 16), (std::pair<double, double>{2.5, 3.0}));   // 34.5 - 32
  EXPECT_EQ(object_centre(up, options, 2), (std::pair<double, double>{8.0, 15.5}));      // -0.5 + 16
  options.wrap = false;  // the same objects bounce off the walls at 3 and 13
  EXPECT_EQ(object_centre(right, options, 2), (std::pair<double, double>{9.0, 3.0}));
  EXPECT_EQ(object_centre(up, options, 2), (std::pair<double, double>{8.0, 6.5}));

  options.wrap = true;
  int64_t crossing = 0;
  for (int64_t index = 0; index < 100; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 6, index);
    crossing += crosses_an_edge(sample, options);
    const std::vector<float> trajectory = values(sample.trajectory);  // [M, T, 2]
    for (size_t o = 0; o < sample.objects.size(); ++o) {
      const ShapeObject& object = sample.objects[o];
      for (int64_t t = 0; t < options.frames; ++t) {
        const float* centre = &trajectory[size_t((int64_t(o) * options.frames + t) * 2)];
        ASSERT_TRUE(centre[0] >= 0 && centre[0] < 16 && centre[1] >= 0 && centre[1] < 16) << sample.caption;
        EXPECT_NEAR(minimum_image(centre[0] - (object.x0 + object.vx * double(t)), 16), 0.0, 1e-5);
        EXPECT_NEAR(minimum_image(centre[1] - (object.y0 + object.vy * double(t)), 16), 0.0, 1e-5);
        if (t == 0) continue;
        EXPECT_NEAR(minimum_image(centre[0] - centre[-2], 16), object.vx, 1e-5) << sample.caption << " frame " << t;
        EXPECT_NEAR(minimum_image(centre[1] - centre[-1], 16), object.vy, 1e-5) << sample.caption << " frame " << t;
      }
    }
  }
  EXPECT_GT(crossing, 30);

  const ShapesSample a = render_shapes_sample(options, 7, 3), b = render_shapes_sample(options, 7, 3);
  EXPECT_TRUE(same_bytes(a.video, b.video));
  EXPECT_TRUE(same_bytes(a.trajectory, b.trajectory));
  EXPECT_EQ(a.caption, b.caption);
  EXPECT_FALSE(same_bytes(a.video, render_shapes_sample(options, 8, 3).video));
  options.wrap = false;
  EXPECT_FALSE(same_bytes(a.video, render_shapes_sample(options, 7, 3).video));
}

// An object on an edge of a wrapped frame is drawn on both sides of it, whole: one object
// per video over a plain background, so a pixel is coloured (its channels differ) exactly
// where the object covers a subsample, and the coverage alpha read back from it sums to the
// shape's area. Every coloured pixel lies within the object's reach measured the short way
// round (no copy drawn elsewhere), and an object reaching 1.5 px past an edge colours the
// first and the last column (row). Supersampling errs by less than 0.12 px² of area per px
// of perimeter (0.112 measured over 300 videos, wrapped or not); an object cut off at an
// edge it reaches a pixel past loses more (a radius-3 circle: 3.1 px² for 18.8 px).
TEST(Shapes, WrapDrawsObjectsAcrossTheEdges) {
  ShapesOptions options;  // 16 x 16, sizes 3-5
  options.wrap = true;
  options.min_objects = options.max_objects = 1;
  options.gradient_background = false;
  const int64_t T = options.frames, H = options.height, W = options.width, plane = T * H * W;
  int64_t straddling = 0;
  for (int64_t index = 0; index < 200; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 3, index);
    const ShapeObject& object = sample.objects[0];
    const float* video = sample.video.data<float>();  // [3, T, H, W]
    const Rgb rgb = colour_rgb(object.colour);
    const float colour[3] = {rgb.r, rgb.g, rgb.b};
    const int channel = colour[0] > 0 ? 0 : colour[1] > 0 ? 1 : 2;  // a channel far from the dark grey
    const double factor[kShapeKindCount] = {2 * 3.141592653589793, 8.0, 3 * 1.7320508075688772};
    const double area[kShapeKindCount] = {3.141592653589793, 4.0, 3 * 1.7320508075688772 / 4};
    const double perimeter = factor[int(object.kind)] * object.size;
    for (int64_t t = 0; t < T; ++t) {
      const float* frame = video + t * H * W;
      auto pixel = [&](int c, int64_t i, int64_t j) { return frame[c * plane + i * W + j]; };
      auto coloured = [&](int64_t i, int64_t j) {
        return std::abs(pixel(0, i, j) - pixel(1, i, j)) > 0.05f || std::abs(pixel(1, i, j) - pixel(2, i, j)) > 0.05f;
      };
      std::optional<float> background;
      for (int64_t p = 0; p < H * W && !background; ++p)
        if (!coloured(p / W, p % W)) background = pixel(0, p / W, p % W);
      ASSERT_TRUE(background.has_value());
      const auto [cx, cy] = object_centre(object, options, t);
      double mass = 0;
      bool first_column = false, last_column = false, first_row = false, last_row = false;
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j) {
          if (!coloured(i, j)) continue;
          EXPECT_LE(std::abs(minimum_image(double(j) + 0.5 - cx, double(W))), object.size + 0.5) << sample.caption;
          EXPECT_LE(std::abs(minimum_image(double(i) + 0.5 - cy, double(H))), object.size + 0.5) << sample.caption;
          mass += (pixel(channel, i, j) - *background) / (colour[channel] - *background);
          first_column |= j == 0;
          last_column |= j == W - 1;
          first_row |= i == 0;
          last_row |= i == H - 1;
        }
      EXPECT_NEAR(mass, area[int(object.kind)] * object.size * object.size, 0.12 * perimeter)
          << sample.caption << " frame " << t;
      if (object.kind == ShapeKind::Triangle) continue;  // its corners may not reach the edge
      const double reach = object.size - 1.5;
      if (cx < reach || cx > double(W) - reach) {
        ++straddling;
        EXPECT_TRUE(first_column && last_column) << sample.caption << " frame " << t << " x " << cx;
      }
      if (cy < reach || cy > double(H) - reach) {
        ++straddling;
        EXPECT_TRUE(first_row && last_row) << sample.caption << " frame " << t << " y " << cy;
      }
    }
  }
  EXPECT_GT(straddling, 200);
}

struct Moments {
  double mean, std;
};

Moments moments(const std::vector<double>& x) {
  double sum = 0, squares = 0;
  for (double v : x) sum += v;
  const double mean = sum / double(x.size());
  for (double v : x) squares += (v - mean) * (v - mean);
  return {mean, std::sqrt(squares / double(x.size() - 1))};
}

// Why wrap exists: with it, where objects are in a frame does not depend on the frame, for
// every caption direction; with walls and clear_frames = frames - 1 (the shapes-h100 data)
// an object moving right starts on the left and ends on the right, a drift a relative-
// position DiT cannot produce from noise. Per direction and axis, the mean and the spread
// of the centres in the first and the last frame of 1000 samples (about 370 objects per
// direction) must agree: n objects give each mean a standard error sigma / sqrt(n) and,
// whatever the correlation of an object's first and last centre, their difference one of
// at most (sigma_first + sigma_last) / sqrt(n); 4 of those is the tolerance (about 3.8 px
// for 32 px). A uniform's sample std has standard error sigma sqrt(0.2 / n) (kurtosis 9/5),
// the spreads get 4 of those summed (1.7 px). Wrapped, both frames also match the uniform
// (mean W / 2, std W / sqrt(12)) within 4 standard errors; with walls, the mean along the
// motion moves by about 12 frames x 1.1 px, more than 10 px and the tolerance.
TEST(Shapes, WrapMakesPositionsStationary) {
  ShapesOptions options = shapes_h100_options();
  const int64_t samples = 1000, T = options.frames;
  for (const bool wrap : {true, false}) {
    options.wrap = wrap;
    // centres[direction][first or last frame][axis]: one entry per object.
    std::array<std::array<std::array<std::vector<double>, 2>, 2>, kDirectionCount> centres;
    for (int64_t index = 0; index < samples; ++index) {
      const ShapesSample sample = render_shapes_sample(options, 12, index);
      const std::vector<float> trajectory = values(sample.trajectory);  // [M, T, 2]
      for (size_t o = 0; o < sample.objects.size(); ++o)
        for (int f = 0; f < 2; ++f)
          for (int k = 0; k < 2; ++k)
            centres[int(sample.objects[o].direction)][size_t(f)][size_t(k)].push_back(
                trajectory[size_t((int64_t(o) * T + (f == 0 ? 0 : T - 1)) * 2 + k)]);
    }
    for (int d = 0; d < kDirectionCount; ++d)
      for (int k = 0; k < 2; ++k) {
        const std::vector<double>& first_frame = centres[size_t(d)][0][size_t(k)];
        const double n = double(first_frame.size());
        ASSERT_GT(n, 300);
        const Moments first = moments(first_frame), last = moments(centres[size_t(d)][1][size_t(k)]);
        const double mean_tolerance = 4 * (first.std + last.std) / std::sqrt(n);
        const std::string where = fmt::format("{} objects moving {}, {} axis", wrap ? "wrapped" : "walled",
                                              direction_name(Direction(d)), k == 0 ? "x" : "y");
        std::printf("%s: mean %.2f -> %.2f (tolerance %.2f), std %.2f -> %.2f\n", where.c_str(), first.mean,
                    last.mean, mean_tolerance, first.std, last.std);
        if (wrap) {
          EXPECT_NEAR(last.mean, first.mean, mean_tolerance) << where;
          EXPECT_NEAR(last.std, first.std, 4 * (first.std + last.std) * std::sqrt(0.2 / n)) << where;
          for (const Moments& frame : {first, last}) {
            EXPECT_NEAR(frame.mean, 32 / 2.0, 4 * frame.std / std::sqrt(n)) << where;
            EXPECT_NEAR(frame.std, 32 / std::sqrt(12.0), 4 * frame.std * std::sqrt(0.2 / n)) << where;
          }
          continue;
        }
        const bool along = (d == int(Direction::Left) || d == int(Direction::Right)) == (k == 0);
        if (!along) continue;
        const double drift = (last.mean - first.mean) * (d == int(Direction::Left) || d == int(Direction::Up) ? -1 : 1);
        EXPECT_GT(drift, 10.0) << where;
        EXPECT_GT(drift, mean_tolerance) << where;
      }
  }
}

// Fraction of samples whose caption the detector confirms, optionally with noise added.
// The detector is told that the videos wrap when they do, unless `detector_wrap` says.
double agreement_rate(const ShapesOptions& options, double noise_std, int64_t samples,
                      std::optional<bool> detector_wrap = std::nullopt) {
  int64_t ok = 0;
  for (int64_t index = 0; index < samples; ++index) {
    ShapesSample sample = render_shapes_sample(options, 11, index);
    Tensor video = sample.video;
    if (noise_std > 0) {
      const Tensor noise = Tensor::randn(video.shape(), 99, uint64_t(index) * uint64_t(video.numel()));
      float* v = video.data<float>();
      const float* n = noise.data<float>();
      for (int64_t i = 0; i < video.numel(); ++i) v[i] += float(noise_std) * n[i];
    }
    const PromptAgreement agreement = prompt_agreement(video, sample.objects, detector_wrap.value_or(options.wrap));
    ok += agreement.all_ok;
    EXPECT_EQ(agreement.all_ok, agreement.problems.empty());
  }
  return double(ok) / double(samples);
}

TEST(Shapes, DetectorConfirmsRenderedCaptions) {
  ShapesOptions options;
  const double clean = agreement_rate(options, 0.0, 200);
  const double noisy = agreement_rate(options, 0.1, 200);
  options.gradient_background = false;
  options.max_objects = 3;
  options.height = options.width = 20;
  const double three = agreement_rate(options, 0.1, 200);
  std::printf("prompt agreement: clean %.3f, noise 0.1 %.3f, 3 objects 20x20 plain %.3f\n", clean, noisy, three);
  EXPECT_GE(clean, 0.95);
  EXPECT_GE(noisy, 0.95);
  EXPECT_GE(three, 0.95);
}

TEST(Shapes, DetectorRejectsWrongCaptions) {
  const ShapesOptions options;
  const ShapesSample sample = render_shapes_sample(options, 4, 0);
  std::vector<ShapeObject> wrong_direction = sample.objects;
  const Direction opposite[] = {Direction::Right, Direction::Left, Direction::Down, Direction::Up};
  wrong_direction[0].direction = opposite[int(wrong_direction[0].direction)];
  const PromptAgreement moved = prompt_agreement(sample.video, wrong_direction);
  EXPECT_TRUE(moved.colours_ok);
  EXPECT_FALSE(moved.motion_ok);
  EXPECT_FALSE(moved.all_ok);
  ASSERT_EQ(moved.problems.size(), 1u);
  expect_contains(moved.problems[0], {colour_name(sample.objects[0].colour), "caption says"});

  std::set<Colour> used;
  for (const ShapeObject& o : sample.objects) used.insert(o.colour);
  std::vector<ShapeObject> wrong_colour = sample.objects;
  for (int c = 0; c < kColourCount; ++c)
    if (!used.count(Colour(c))) wrong_colour[0].colour = Colour(c);
  const PromptAgreement missing = prompt_agreement(sample.video, wrong_colour);
  EXPECT_FALSE(missing.colours_ok);
  EXPECT_FALSE(missing.all_ok);
  expect_contains(missing.problems[0], {"colour not found"});

  // A background-only video has no objects; a still object has no direction.
  const Tensor empty_video = Tensor::full({3, 9, 16, 16}, -0.7);
  EXPECT_TRUE(detect_objects(empty_video).empty());
  ObjectTrack still{Colour::Red, Tensor::full({9, 2}, 8.0), 9};
  EXPECT_FALSE(motion_direction(still).has_value());
}

// Noise has pixels near every palette colour (about 3% of N(0, 1) pixels are within the
// colour distance of red), but scattered: no objects are found in it, so an untrained
// model's output does not pass the colour check. Rendered objects still are (tests above).
TEST(Shapes, DetectorFindsNoObjectsInNoise) {
  for (const Shape& shape : {Shape{3, 13, 32, 32}, Shape{3, 9, 16, 16}})
    for (double stddev : {0.5, 1.0, 1.5})
      for (bool wrap : {false, true})
        for (uint64_t seed = 0; seed < 10; ++seed) {
          const Tensor noise = Tensor::randn(shape, 100 + seed, 0, DType::F32, Device::cpu(), 0.0, stddev);
          const std::vector<ObjectTrack> tracks = detect_objects(noise, wrap);
          EXPECT_TRUE(tracks.empty()) << shape_str(shape) << " std " << stddev << " wrap " << wrap << ": found "
                                      << tracks.size() << " objects, e.g. " << colour_name(tracks[0].colour);
        }
  const ShapesOptions options;
  const ShapesSample sample = render_shapes_sample(options, 6, 0);
  const Tensor noise = Tensor::randn(sample.video.shape(), 7, 0, DType::F32);
  EXPECT_FALSE(prompt_agreement(noise, sample.objects).colours_ok);
}

// Objects whose discs stay apart in frame t (no occlusion to bias the centroid); on a
// wrapped frame apart the short way round.
bool apart(const ShapesSample& sample, const ShapesOptions& options, size_t o, int64_t t) {
  const auto [x, y] = object_centre(sample.objects[o], options, t);
  for (size_t p = 0; p < sample.objects.size(); ++p) {
    if (p == o) continue;
    const auto [px, py] = object_centre(sample.objects[p], options, t);
    const double reach = sample.objects[o].size + sample.objects[p].size + 1.0;
    const double dx = options.wrap ? minimum_image(x - px, double(options.width)) : x - px;
    const double dy = options.wrap ? minimum_image(y - py, double(options.height)) : y - py;
    if (dx * dx + dy * dy < reach * reach) return false;
  }
  return true;
}

struct CentreErrors {
  double worst = 0;         // px, per axis (the short way round a wrapped frame)
  int64_t compared = 0;     // object frames compared
  int64_t straddling = 0;   // of those, objects over an edge of a wrapped frame
};

// Detected centres against the trajectory over 100 samples, in the frames where objects
// are apart.
CentreErrors centre_errors(const ShapesOptions& options) {
  CentreErrors errors;
  for (int64_t index = 0; index < 100; ++index) {
    const ShapesSample sample = render_shapes_sample(options, 5, index);
    const std::vector<ObjectTrack> tracks = detect_objects(sample.video, options.wrap);
    const std::vector<float> trajectory = values(sample.trajectory);  // [M, T, 2]
    for (size_t o = 0; o < sample.objects.size(); ++o) {
      auto track = std::find_if(tracks.begin(), tracks.end(),
                                [&](const ObjectTrack& k) { return k.colour == sample.objects[o].colour; });
      EXPECT_NE(track, tracks.end()) << sample.caption;
      if (track == tracks.end()) continue;
      const std::vector<float> centres = values(track->centres);  // [T, 2]
      for (int64_t t = 0; t < options.frames; ++t) {
        if (!apart(sample, options, o, t)) continue;
        bool straddles = false;
        for (int k = 0; k < 2; ++k) {
          const double extent = double(k == 0 ? options.width : options.height);
          const double truth = trajectory[size_t((int64_t(o) * options.frames + t) * 2 + k)];
          const double difference = double(centres[size_t(t * 2 + k)]) - truth;
          errors.worst = std::max(errors.worst, std::abs(options.wrap ? minimum_image(difference, extent) : difference));
          straddles |= truth < sample.objects[o].size || truth > extent - sample.objects[o].size;
        }
        ++errors.compared;
        errors.straddling += options.wrap && straddles;
      }
    }
  }
  return errors;
}

TEST(Shapes, DetectedCentresMatchTrajectory) {
  const ShapesOptions options;
  const CentreErrors errors = centre_errors(options);
  std::printf("centres compared %lld, worst error %.3f px\n", (long long)errors.compared, errors.worst);
  EXPECT_GT(errors.compared, 300);
  EXPECT_LT(errors.worst, 0.5);
}

// On a wrapped frame an object split by an edge is found where it is (its centroid taken
// around the circle), to the same accuracy as one inside the frame.
TEST(Shapes, DetectedCentresMatchWrappedTrajectory) {
  ShapesOptions options;
  options.wrap = true;
  const CentreErrors errors = centre_errors(options);
  std::printf("wrapped centres compared %lld (%lld over an edge), worst error %.3f px\n", (long long)errors.compared,
              (long long)errors.straddling, errors.worst);
  EXPECT_GT(errors.compared, 300);
  EXPECT_GT(errors.straddling, 100);
  EXPECT_LT(errors.worst, 0.5);
}

// The detector reads wrapped videos as rendered, objects crossing edges included, clean
// and under noise, as well as plain ones (DetectorConfirmsRenderedCaptions); told nothing,
// it misreads a crossing as a jump the other way.
TEST(Shapes, DetectorFollowsObjectsAcrossWrappedEdges) {
  const ObjectTrack crossing{Colour::Red, Tensor::from_vector({15.6, 8, 0.3, 8, 1.0, 8, 1.8, 8}, {4, 2}), 4};
  EXPECT_EQ(motion_direction(crossing), Direction::Left);  // 0.3 - 15.6
  EXPECT_EQ(motion_direction(crossing, true, 16, 16), Direction::Right);
  const ObjectTrack rising{Colour::Red, Tensor::from_vector({8, 0.4, 8, 11.5, 8, 10.8, 8, 10.0}, {4, 2}), 4};
  EXPECT_EQ(motion_direction(rising, true, 16, 12), Direction::Up);
  expect_contains(error_message([&] { motion_direction(crossing, true); }), {"width and height"});

  ShapesOptions options;
  options.wrap = true;
  int64_t crossing_samples = 0;
  for (int64_t index = 0; index < 200; ++index)  // agreement_rate's samples
    crossing_samples += crosses_an_edge(render_shapes_sample(options, 11, index), options);
  const double clean = agreement_rate(options, 0.0, 200);
  const double noisy = agreement_rate(options, 0.1, 200);
  const double unwrapped = agreement_rate(options, 0.0, 200, false);
  ShapesOptions three = options;
  three.gradient_background = false;
  three.max_objects = 3;
  three.height = three.width = 20;
  ShapesOptions large = shapes_h100_options();
  large.wrap = true;
  const double three_noisy = agreement_rate(three, 0.1, 200), large_noisy = agreement_rate(large, 0.1, 200);
  std::printf("wrapped prompt agreement (%lld of 200 cross an edge): clean %.3f, noise 0.1 %.3f, 3 objects 20x20 "
              "plain %.3f, 32x32 %.3f; read unwrapped %.3f\n",
              (long long)crossing_samples, clean, noisy, three_noisy, large_noisy, unwrapped);
  EXPECT_GT(crossing_samples, 80);
  EXPECT_EQ(clean, 1.0);
  EXPECT_EQ(noisy, 1.0);
  EXPECT_EQ(three_noisy, 1.0);
  EXPECT_EQ(large_noisy, 1.0);
  EXPECT_LT(unwrapped, 0.9);
}

TEST(Shapes, OptionsAreValidated) {
  ShapesOptions options;
  options.max_objects = 4;
  expect_contains(error_message([&] { render_shapes_sample(options, 0, 0); }), {"max_objects"});
  options = ShapesOptions();
  options.max_size = 8;
  expect_contains(error_message([&] { render_shapes_sample(options, 0, 0); }), {"max_size"});
}

TEST(TextEncoder, SeededPaddedAndStrict) {
  const TextEncoder encoder(8, 16, 3);
  const Tensor a = encoder.encode("a red circle moving left");
  ASSERT_EQ(a.shape(), (Shape{8, 16}));
  EXPECT_TRUE(same_bytes(a, TextEncoder(8, 16, 3).encode("a red circle moving left")));
  EXPECT_FALSE(same_bytes(a, TextEncoder(8, 16, 4).encode("a red circle moving left")));
  const std::vector<float> v = values(a);
  for (int64_t i = 5 * 16; i < 8 * 16; ++i) EXPECT_EQ(v[size_t(i)], 0.0f) << "padding row " << i / 16;
  double norm = 0;
  for (int64_t d = 0; d < 16; ++d) norm += double(v[size_t(d)]) * v[size_t(d)];
  EXPECT_GT(norm, 0.2);
  EXPECT_LT(norm, 3.0);  // rows are scaled by 1/sqrt(text_dim): norm about 1

  // Case and extra spaces do not matter; a row depends on the word and its position, so
  // swapping two words changes both rows (the DiT can tell "red ... left" from "red ... up"),
  // and the difference of two captions' rows at one position is the words' difference.
  EXPECT_TRUE(same_bytes(encoder.encode("  A RED circle   moving left"), a));
  const std::vector<float> swapped = values(encoder.encode("a circle red moving left"));
  EXPECT_NE(std::memcmp(&v[16], &swapped[32], 16 * sizeof(float)), 0) << "red at positions 1 and 2 must differ";
  const std::vector<float> p = values(encoder.encode("x red")), q = values(encoder.encode("x blue"));
  const std::vector<float> r = values(encoder.encode("y z red")), u = values(encoder.encode("y z blue"));
  for (int64_t d = 0; d < 16; ++d)  // (red - blue) is the same at positions 1 and 2
    EXPECT_NEAR(p[size_t(16 + d)] - q[size_t(16 + d)], r[size_t(32 + d)] - u[size_t(32 + d)], 1e-6);
  EXPECT_NE(std::memcmp(&v[0], &v[16], 16 * sizeof(float)), 0);

  for (float x : values(encoder.encode(""))) EXPECT_EQ(x, 0.0f);
  expect_contains(error_message([&] { encoder.encode("one two three four five six seven eight nine"); }),
                  {"one two three four five six seven eight nine", "9 words", "text_len 8"});

  const Tensor batch = encoder.encode_batch({"a red circle moving left", "", "red square"});
  ASSERT_EQ(batch.shape(), (Shape{3, 8, 16}));
  EXPECT_TRUE(same_bytes(batch.select(0, 0).contiguous(), a));
  EXPECT_TRUE(same_bytes(batch.select(0, 2).contiguous(), encoder.encode("red square")));
}

ShapesOptions small_options() {
  ShapesOptions options;
  options.frames = 5;
  options.height = 12;
  options.width = 14;
  options.min_size = 2.0;
  options.max_size = 3.5;
  options.text_len = 12;
  options.text_dim = 8;
  return options;
}

TEST(ShapesDataset, RoundTrip) {
  TempDir dir;
  const std::string path = dir.file("shapes.h5");
  ShapesOptions options = small_options();
  options.clear_frames = 3;
  const TextEncoder encoder(options.text_len, options.text_dim, 21);
  write_shapes_dataset(path, options, 5, 10, 6, encoder, false);
  EXPECT_EQ(dir.entry_count(), 1u);  // no temp file left behind

  const ShapesDataset dataset = ShapesDataset::open(path);
  EXPECT_EQ(dataset.size(), 6);
  EXPECT_EQ(dataset.seed(), 5u);
  EXPECT_EQ(dataset.text_seed(), 21u);
  EXPECT_EQ(dataset.first_index(), 10);
  const ShapesOptions read = dataset.options();
  EXPECT_EQ(read.frames, 5);
  EXPECT_EQ(read.height, 12);
  EXPECT_EQ(read.width, 14);
  EXPECT_EQ(read.max_objects, options.max_objects);
  EXPECT_EQ(read.min_size, 2.0);
  EXPECT_EQ(read.max_speed, options.max_speed);
  EXPECT_EQ(read.gradient_background, options.gradient_background);
  EXPECT_EQ(read.clear_frames, options.clear_frames);
  EXPECT_EQ(read.text_len, 12);
  for (int64_t i = 0; i < 6; ++i) {
    const ShapesSample sample = render_shapes_sample(options, 5, 10 + i);
    EXPECT_TRUE(same_bytes(dataset.video(i), sample.video)) << i;
    EXPECT_TRUE(same_bytes(dataset.text_embedding(i), encoder.encode(sample.caption))) << i;
    EXPECT_EQ(dataset.caption(i), sample.caption);
    EXPECT_EQ(std::memcmp(dataset.trajectory(i).data_ptr(), sample.trajectory.data_ptr(), sample.trajectory.nbytes()),
              0);
    const std::vector<ShapeObject> objects = dataset.objects(i);
    ASSERT_EQ(objects.size(), sample.objects.size());
    for (size_t o = 0; o < objects.size(); ++o) {
      EXPECT_EQ(objects[o].kind, sample.objects[o].kind);
      EXPECT_EQ(objects[o].colour, sample.objects[o].colour);
      EXPECT_EQ(objects[o].direction, sample.objects[o].direction);
      EXPECT_FLOAT_EQ(float(objects[o].x0), float(sample.objects[o].x0));
      EXPECT_FLOAT_EQ(float(objects[o].vy), float(sample.objects[o].vy));
      EXPECT_FLOAT_EQ(float(objects[o].size), float(sample.objects[o].size));
    }
  }
  expect_contains(error_message([&] { dataset.video(6); }), {path, "sample 6"});

  // The schema as h5py and `rehyat inspect` see it.
  std::set<std::string> names;
  for (const Hdf5DatasetInfo& info : list_hdf5_datasets(path)) {
    names.insert(info.path);
    if (info.path == "/videos") {
      EXPECT_EQ(info.shape, (Shape{6, 3, 5, 12, 14}));
      EXPECT_EQ(info.chunk_shape, (Shape{1, 3, 5, 12, 14}));
    }
    if (info.path == "/captions") {
      EXPECT_EQ(info.type_name, "string");
    }
    if (info.path == "/objects") {
      EXPECT_EQ(info.type_name, "i32");
    }
  }
  EXPECT_EQ(names, (std::set<std::string>{"/videos", "/text_embeddings", "/captions", "/trajectories", "/objects",
                                          "/object_motion"}));
}

// The wrap option is the attribute 'wrap' on '/' and reads back with the videos rendered
// wrapped; a file without it (written before the option existed) reads as not wrapped,
// which is how such files were rendered.
TEST(ShapesDataset, WrapIsStoredAndReadBack) {
  TempDir dir;
  const std::string path = dir.file("shapes.h5");
  ShapesOptions options = small_options();
  options.wrap = true;
  const TextEncoder encoder(options.text_len, options.text_dim);
  write_shapes_dataset(path, options, 5, 0, 4, encoder, false);
  {
    const ShapesDataset dataset = ShapesDataset::open(path);
    EXPECT_TRUE(dataset.options().wrap);
    for (int64_t i = 0; i < 4; ++i) {
      const ShapesSample sample = render_shapes_sample(options, 5, i);
      EXPECT_TRUE(same_bytes(dataset.video(i), sample.video)) << i;
      EXPECT_TRUE(same_bytes(dataset.trajectory(i), sample.trajectory)) << i;
    }
  }
  {
    Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Adelete(file.get(), "wrap"), 0);
  }
  EXPECT_FALSE(ShapesDataset::open(path).options().wrap);

  options.wrap = false;
  write_shapes_dataset(path, options, 5, 0, 4, encoder, false);
  {
    Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    EXPECT_GT(H5Aexists(file.get(), "wrap"), 0);
  }
  EXPECT_FALSE(ShapesDataset::open(path).options().wrap);
}

TEST(ShapesDataset, WriterChecksItsInputs) {
  TempDir dir;
  const std::string path = dir.file("shapes.h5");
  ShapesOptions options = small_options();
  expect_contains(error_message([&] { write_shapes_dataset(path, options, 0, 0, 2, TextEncoder(12, 9), false); }),
                  {path, "text_dim"});
  options.max_objects = 3;
  expect_contains(error_message([&] { write_shapes_dataset(path, options, 0, 0, 2, TextEncoder(12, 8), false); }),
                  {path, "17 words", "text_len 12"});
  EXPECT_EQ(dir.entry_count(), 0u);
}

TEST(ShapesDataset, SchemaErrorsNameTheFile) {
  TempDir dir;
  const std::string path = dir.file("shapes.h5");
  const ShapesOptions options = small_options();
  write_shapes_dataset(path, options, 1, 0, 3, TextEncoder(options.text_len, options.text_dim), false);
  {
    Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_TRUE(file.valid());
    ASSERT_GE(H5Ldelete(file.get(), "/videos", H5P_DEFAULT), 0);
  }
  expect_contains(error_message([&] { ShapesDataset::open(path); }), {path, "'/videos' missing"});

  write_shapes_dataset(path, options, 1, 0, 3, TextEncoder(options.text_len, options.text_dim), false);
  {
    Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Ldelete(file.get(), "/captions", H5P_DEFAULT), 0);
    const hsize_t dims[1] = {2};
    Hdf5Id space(H5Screate_simple(1, dims, nullptr));
    Hdf5Id set(H5Dcreate2(file.get(), "/captions", H5T_NATIVE_INT32, space.get(), H5P_DEFAULT, H5P_DEFAULT,
                          H5P_DEFAULT));
    ASSERT_TRUE(set.valid());
  }
  expect_contains(error_message([&] { ShapesDataset::open(path); }), {path, "'/captions'", "i32 [2]", "string [3]"});

  write_shapes_dataset(path, options, 1, 0, 3, TextEncoder(options.text_len, options.text_dim), false);
  {
    Hdf5Id file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Adelete(file.get(), "format"), 0);
  }
  expect_contains(error_message([&] { ShapesDataset::open(path); }), {path, "'format'"});

  const std::string text = dir.file("notes.h5");
  testing::write_file(text, "not hdf5");
  expect_contains(error_message([&] { ShapesDataset::open(text); }), {text, "not an HDF5 file"});
  expect_contains(error_message([&] { ShapesDataset::open(dir.file("missing.h5")); }), {"missing.h5", "no such file"});
}

class ShapesLoader : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("shapes.h5");
    ShapesOptions options = small_options();
    options.frames = 2;
    write_shapes_dataset(path_, options, 3, 0, 25, TextEncoder(options.text_len, options.text_dim), false);
  }
  ShapesDataset dataset() const { return ShapesDataset::open(path_); }

  TempDir dir_;
  std::string path_;
};

std::vector<int64_t> epoch_indices(DataLoader& loader) {
  std::vector<int64_t> seen;
  for (int64_t b = 0; b < loader.batches_per_epoch(); ++b) {
    const Batch batch = loader.next();
    seen.insert(seen.end(), batch.indices.begin(), batch.indices.end());
  }
  return seen;
}

TEST_F(ShapesLoader, EverySampleOncePerEpochInAFreshOrder) {
  const ShapesDataset data = dataset();
  DataLoader loader(data, 5, 17);
  ASSERT_EQ(loader.batches_per_epoch(), 5);
  const std::vector<int64_t> first = epoch_indices(loader);
  EXPECT_EQ(loader.position().epoch, 1);
  EXPECT_EQ(loader.position().index, 0);
  const std::vector<int64_t> second = epoch_indices(loader);
  for (const auto& epoch : {first, second}) {
    std::vector<int64_t> sorted = epoch;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> all(25);
    for (int64_t i = 0; i < 25; ++i) all[size_t(i)] = i;
    EXPECT_EQ(sorted, all);
  }
  EXPECT_NE(first, second);

  DataLoader again(data, 5, 17);
  EXPECT_EQ(epoch_indices(again), first);
  DataLoader other_seed(data, 5, 18);
  EXPECT_NE(epoch_indices(other_seed), first);
  DataLoader in_order(data, 5, 17, false);
  EXPECT_EQ(epoch_indices(in_order)[7], 7);

  // Batches carry the rows they name.
  DataLoader check(data, 4, 2);
  const Batch batch = check.next();
  ASSERT_EQ(batch.videos.shape(), (Shape{4, 3, 2, 12, 14}));
  ASSERT_EQ(batch.text.shape(), (Shape{4, 12, 8}));
  for (int64_t b = 0; b < 4; ++b) {
    EXPECT_TRUE(same_bytes(batch.videos.select(0, b).contiguous(), data.video(batch.indices[size_t(b)])));
    EXPECT_TRUE(same_bytes(batch.text.select(0, b).contiguous(), data.text_embedding(batch.indices[size_t(b)])));
  }
}

TEST_F(ShapesLoader, RanksAreDisjointAndCover) {
  const ShapesDataset data = dataset();
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::vector<int64_t> all;
    for (int rank = 0; rank < 3; ++rank) {
      DataLoader loader(data, 2, 9, true, rank, 3);
      EXPECT_EQ(loader.batches_per_epoch(), 4);  // 25 / 3 = 8 samples each, 1 left over
      loader.set_position({epoch, 0});
      const std::vector<int64_t> seen = epoch_indices(loader);
      all.insert(all.end(), seen.begin(), seen.end());
    }
    std::sort(all.begin(), all.end());
    EXPECT_EQ(std::unique(all.begin(), all.end()), all.end()) << "ranks overlap";
    EXPECT_EQ(all.size(), 24u);
    DataLoader single(data, 2, 9);
    std::vector<int64_t> order = single.epoch_order(epoch);
    order.pop_back();  // the dropped tail
    std::sort(order.begin(), order.end());
    EXPECT_EQ(all, order);
  }
  expect_contains(error_message([&] { DataLoader(data, 9, 0, true, 0, 3); }), {path_, "3 ranks"});
  expect_contains(error_message([&] { DataLoader(data, 1, 0, true, 3, 3); }), {"rank 3"});
}

TEST_F(ShapesLoader, ResumeAndPrefetchGiveTheSameBatches) {
  const ShapesDataset data = dataset();
  DataLoader original(data, 3, 4, true, 0, 1, 3);
  for (int i = 0; i < 6; ++i) original.next();
  const LoaderPosition position = original.position();
  EXPECT_EQ(position.epoch, 0);
  EXPECT_EQ(position.index, 18);
  std::vector<Batch> following;
  for (int i = 0; i < 8; ++i) following.push_back(original.next());  // crosses into epoch 1

  for (int prefetch : {0, 1, 4}) {
    DataLoader resumed(data, 3, 4, true, 0, 1, prefetch);
    resumed.next();  // wherever it was, set_position moves it
    resumed.set_position(position);
    for (const Batch& expected : following) {
      const Batch batch = resumed.next();
      EXPECT_EQ(batch.indices, expected.indices) << "prefetch " << prefetch;
      EXPECT_TRUE(same_bytes(batch.videos, expected.videos));
      EXPECT_TRUE(same_bytes(batch.text, expected.text));
    }
  }
  DataLoader loader(data, 3, 4);
  expect_contains(error_message([&] { loader.set_position({0, 4}); }), {path_, "batch_size 3"});
}

// A chunk of /videos that fails to decompress: the worker's error reaches next().
TEST_F(ShapesLoader, WorkerErrorsReachNext) {
  {
    Hdf5Id file(H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
    ASSERT_GE(H5Ldelete(file.get(), "/videos", H5P_DEFAULT), 0);
    const hsize_t dims[5] = {25, 3, 2, 12, 14}, chunk[5] = {1, 3, 2, 12, 14};
    Hdf5Id space(H5Screate_simple(5, dims, nullptr));
    Hdf5Id plist(H5Pcreate(H5P_DATASET_CREATE));
    H5Pset_chunk(plist.get(), 5, chunk);
    H5Pset_deflate(plist.get(), 6);
    Hdf5Id set(H5Dcreate2(file.get(), "/videos", H5T_IEEE_F32LE, space.get(), H5P_DEFAULT, plist.get(), H5P_DEFAULT));
    std::vector<float> zeros(25 * 3 * 2 * 12 * 14, 0.0f);
    ASSERT_GE(H5Dwrite(set.get(), H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros.data()), 0);
  }
  std::vector<haddr_t> chunk_addresses;
  {
    Hdf5Id file(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    Hdf5Id set(H5Dopen2(file.get(), "/videos", H5P_DEFAULT));
    Hdf5Id space(H5Dget_space(set.get()));
    for (hsize_t c = 0; c < 25; ++c) {
      hsize_t offset[5];
      unsigned mask = 0;
      haddr_t address = 0;
      hsize_t size = 0;
      ASSERT_GE(H5Dget_chunk_info(set.get(), space.get(), c, offset, &mask, &address, &size), 0);
      chunk_addresses.push_back(address);
    }
  }
  std::string bytes = testing::read_file(path_);
  for (haddr_t address : chunk_addresses) std::memset(&bytes[size_t(address)], 0xAB, 8);  // break the zlib header
  testing::write_file(path_, bytes);

  DataLoader loader(dataset(), 2, 0, true, 0, 1, 2);
  expect_contains(error_message([&] { loader.next(); }), {path_, "/videos"});
  expect_contains(error_message([&] { loader.next(); }), {path_, "/videos"});  // stays failed
}

}  // namespace
}  // namespace rehyat::data
