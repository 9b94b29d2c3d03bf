// The shapes dataset (SPEC §5): our stand-in for real videos and for VBench. A sample is
// a tiny procedural video of 1-3 anti-aliased objects (circle, square, triangle) in
// distinct palette colours, each moving axis-aligned at constant speed and bouncing off
// the walls (or, with ShapesOptions::wrap, leaving at one edge and coming back at the
// opposite one), over a plain or gradient dark-grey background, with a caption naming
// colour, shape and starting direction. Because the ground truth is known, quality is
// measurable: the detector below finds objects by colour in any video (rendered or
// generated) and checks that the caption's colours and directions are there.
//
// Why wrap: with walls, where an object is in frame t depends on t given its caption (an
// object moving right starts on the left), and a DiT with only relative positions (RoPE)
// barely sees absolute frame positions, so it cannot reproduce that drift and learns to
// ignore the direction words. On a torus with uniform starts every frame's position
// distribution is the same (uniform) for every caption: the direction is purely the
// relation between frames, centre(t + 1) = centre(t) + v.
//
// Coordinates are continuous pixels: pixel (row i, column j) covers [j, j+1) x [i, i+1),
// so its centre is (j + 0.5, i + 0.5). An object's centre is the centroid of its shape
// (for the triangle too), which is what the detector measures.
//
// Everything is a pure function of (options, seed, index) through Philox and plain IEEE
// arithmetic (no libm transcendentals), so every machine renders the same bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace rehyat::data {

enum class ShapeKind { Circle, Square, Triangle };  // names "circle", "square", "triangle"
enum class Colour { Red, Green, Blue, Yellow };     // names "red", "green", "blue", "yellow"
enum class Direction { Left, Right, Up, Down };     // image axes: up = -y (row index falls)

constexpr int kShapeKindCount = 3;
constexpr int kColourCount = 4;
constexpr int kDirectionCount = 4;

std::string shape_kind_name(ShapeKind kind);
std::string colour_name(Colour colour);
std::string direction_name(Direction direction);
// Name -> enum; throws rehyat::Error listing the valid names.
ShapeKind shape_kind_from_name(const std::string& name);
Colour colour_from_name(const std::string& name);
Direction direction_from_name(const std::string& name);

// Palette RGB in [-1, 1]: red (0.9,-0.9,-0.9), green (-0.9,0.9,-0.9), blue (-0.9,-0.9,0.9),
// yellow (0.9,0.9,-0.9).
struct Rgb {
  float r, g, b;
};
Rgb colour_rgb(Colour colour);

struct ShapesOptions {                       // YAML section `data:`
  int64_t frames = 9, height = 16, width = 16;
  int64_t min_objects = 1, max_objects = 2;  // at most 3
  double min_speed = 0.6, max_speed = 1.2;   // pixels per frame
  int64_t clear_frames = 2;                  // frames of motion before the first bounce (capped by
                                             // the free span); frames - 1: no bounce when it fits
  bool wrap = false;                         // the frame is a torus: objects leave at one edge and
                                             // re-enter at the opposite one, starts are uniform over
                                             // the frame and clear_frames is ignored (no bounces)
  double min_size = 3.0, max_size = 5.0;     // circle radius, square half-side, triangle circumradius
  bool gradient_background = true;           // plain or gradient (dark grey tones)
  int64_t text_len = 16, text_dim = 32;      // from the model config
};

// Throws rehyat::Error naming the option when `options` cannot be rendered (sizes that do
// not fit the frame, more than 3 objects, ...).
void validate_shapes_options(const ShapesOptions& options);

// Words in the longest caption `options` can produce (6 per object, less the last "and").
int64_t max_caption_words(const ShapesOptions& options);

struct ShapeObject {
  ShapeKind kind;
  Colour colour;
  Direction direction;
  double x0, y0, vx, vy, size;  // start centre (pixels), velocity (pixels per frame), size
};

struct ShapesSample {
  Tensor video;                      // [3, T, H, W] f32, RGB in [-1, 1]
  std::string caption;               // "a red circle moving left and a blue square moving up"
  std::vector<ShapeObject> objects;  // distinct colours within a video
  Tensor trajectory;                 // [max_objects, T, 2] f32 (x, y) centres; NaN rows for absent objects
};

// Deterministic: the same (options, seed, index) gives the same bytes on every machine.
// Objects start far enough from the wall they head for to move at least two frames (or
// the whole free span) before the first bounce, so the caption's direction is visible;
// each start is the best of 16 tries at keeping clear of the earlier objects (the first
// 3 frames matter most). Where objects still overlap, the smaller one is drawn on top.
// With options.wrap, starts are uniform over [0, W) x [0, H), distances between objects
// are minimum-image ones, every frame counts alike in the placement, and an object on an
// edge is drawn on both sides of it.
ShapesSample render_shapes_sample(const ShapesOptions& options, uint64_t seed, int64_t index);

// Centre of `object` at frame t, in pixels: bouncing off the walls, or with options.wrap
// ((x0 + vx t) mod W, (y0 + vy t) mod H) in [0, W) x [0, H).
std::pair<double, double> object_centre(const ShapeObject& object, const ShapesOptions& options, int64_t frame);

// An axis of `extent` pixels that wraps (ShapesOptions::wrap), for the renderer, the
// detector and the eval metrics alike. wrap_coordinate: p mod extent, in [0, extent).
double wrap_coordinate(double p, double extent);
// minimum_image: the displacement d taken the short way round, in [-extent/2, extent/2):
// what a move of d looks like when positions are only known mod extent.
double minimum_image(double d, double extent);

// "a red circle moving left and a blue square moving up"
std::string shapes_caption(const std::vector<ShapeObject>& objects);

// --- detector -------------------------------------------------------------------------
// A pixel belongs to a palette colour when its RGB distance to it is below
// kDetectorColourDistance (membership falls linearly from 1 at the colour to 0 there); a
// colour is found in a frame when at least kDetectorMinPixels of its pixels touch each other
// (4-connected; scattered pixels, as in noise, do not make an object), and its centre is
// the membership-weighted centroid of all its pixels. A colour is present in a video when it is
// found in at least half of the frames. Tolerates Gaussian noise of std ~0.1 per channel.
//
// `wrap` says the video was rendered with ShapesOptions::wrap (the default false keeps
// the plain-frame results): centroids are then taken around the circle per axis, so an
// object split by an edge has its centre where it is and not in the middle of the frame,
// and displacements between frames are minimum-image ones. The wrapped functions that
// only see centres need the frame size (width for x, height for y).
constexpr double kDetectorColourDistance = 0.75;
constexpr int64_t kDetectorMinPixels = 3;

struct ObjectTrack {
  Colour colour;
  Tensor centres;  // [T, 2] f32 (x, y), NaN where not found
  int64_t found_frames;
};

// Finds each palette colour present in video [3, T, H, W] (pixels within a colour distance).
// With wrap, centres are wrapped coordinates (x mod W, y mod H).
std::vector<ObjectTrack> detect_objects(const Tensor& video, bool wrap = false);

// The track's starting direction, which is what captions name (objects bounce, so the net
// motion can point the other way): the axis with the longer path over the found frames,
// and the sign of the displacement from the first found frame when it first exceeds one
// pixel along that axis. nullopt if it never moves that far or is found in < 2 frames.
// With wrap, the path is followed across the edges of a width x height frame.
std::optional<Direction> motion_direction(const ObjectTrack& track, bool wrap = false, int64_t width = 0,
                                          int64_t height = 0);

// Caption agreement for one generated video: every object of `objects` is found with its
// colour (colours_ok) and starts moving in its direction (motion_ok; false for objects
// whose colour is missing). `problems` says what failed, one line per object at fault
// ("blue square: moves up, caption says left").
struct PromptAgreement {
  bool colours_ok;
  bool motion_ok;
  bool all_ok;
  std::vector<std::string> problems;
};
PromptAgreement prompt_agreement(const Tensor& video, const std::vector<ShapeObject>& objects, bool wrap = false);

}  // namespace rehyat::data
