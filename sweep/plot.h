// PNG charts of the ablation-sweep tables (issue 6: "quality vs FLOPs; metric vs Tc and vs
// To" a person can read at a glance). A chart is one or more series of (x, y) points drawn
// as coloured lines with markers on a white background: dark frame, light grid at "nice"
// tick values (1-2-5 steps on linear axes, decades on log axes), tick labels, axis labels,
// title and a legend. Text uses the built-in 5×7 bitmap font (sweep/plot_font.h), so
// nothing beyond libpng is needed.
//
// layout_plot is the pure part — axis ranges, ticks, where everything goes — and
// write_plot_png draws with it, so tests (and callers placing annotations) can ask where
// a data point lands. Readability rules:
//   - ranges are the data's plus 5% padding; a constant series gets ±5% of its value (±1
//     around 0), so a flat line sits mid-chart with readable tick labels;
//   - a log x axis ticks at decades, or at 1-2-5 × 10^k when the data span less than two
//     decades, or at linear 1-2-5 steps when it spans too little for either;
//   - tick labels are compact ("0.0226", "1.5e12"), one notation per linear axis;
//   - the legend goes in a corner of the plot area that covers no data, else to the right
//     of the plot (or, when that would take over half the plot's width, in the corner
//     covering the least data); labels longer than 36 characters end in "…";
//   - images of at least 1280×800 draw everything at twice the size.
// Only the sweep tables are in mind: a few series of up to a few hundred points.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace rehyat::sweep {

struct Series {
  std::string label;         // legend entry ("" keeps the series out of the legend)
  std::vector<double> x, y;  // same length; x finite; a non-finite y is a missing point (gap)
};

struct PlotOptions {
  std::string title, x_label, y_label;
  bool log_x = false;                      // e.g. the FLOPs axis; every x must be > 0
  bool lines = true;                       // connect each series' points in x order (false: markers only)
  std::vector<std::string> x_tick_labels;  // non-empty: categorical x, x values in [0, n-1] index these
  int width = 720, height = 480;           // pixels, at least 160 × 120
};

using Rgb = std::array<uint8_t, 3>;

// The colour of series i: ten distinct colours (matplotlib's "tab10"), then they repeat,
// while the marker shape (circle, square, triangle up, diamond, triangle down, plus) cycles
// through six, so the first 30 series differ in colour or shape.
Rgb series_color(size_t index);

// A rectangle of pixels; width 0 means "absent".
struct PixelRect {
  int left = 0, top = 0, width = 0, height = 0;
  int right() const { return left + width; }    // one past the last column
  int bottom() const { return top + height; }   // one past the last row
};

struct AxisTick {
  double value;       // in data units (the category index on a categorical axis)
  std::string label;
};

struct PixelPoint {
  double column, row;  // pixel centres are at whole numbers: std::lround gives the pixel
};

// Where everything goes in a chart; layout_plot computes it, write_plot_png draws it.
struct PlotLayout {
  int width = 0, height = 0;  // the whole image
  int scale = 1;              // text and line scale (2 for images of at least 1280×800)
  PixelRect plot;             // the data area, inside the frame
  PixelRect title;            // the title text (absent without a title)
  PixelRect x_label, y_label; // the axis label texts (y_label: the box of the upright-rotated text)
  PixelRect legend;           // the legend box (absent when no series has a label)
  bool log_x = false;
  double x_min = 0, x_max = 1, y_min = 0, y_max = 1;  // the visible data range (x in data units on log axes too)
  std::vector<AxisTick> x_ticks, y_ticks;  // labelled ticks, with grid lines
  std::vector<double> x_minor;             // unlabelled grid lines on log axes (2..9 × 10^k), data units
  int x_tick_rows = 1;                     // crowded categories alternate between 2 rows of labels

  // Data -> pixel: x_min maps to the plot's first column, x_max to its last (log10 on a log
  // axis); y_min to its last row, y_max to its first.
  PixelPoint to_pixel(double x, double y) const;
};

// The layout of a chart of `series`. Errors (rehyat::Error) name `name` (write_plot_png
// passes the path): x and y of different lengths, a non-finite x, no point with finite x
// and y, x <= 0 on a log axis, x outside [0, n-1] on a categorical axis, log_x together
// with x_tick_labels, or a size too small for the labels.
PlotLayout layout_plot(const std::vector<Series>& series, const PlotOptions& options,
                       const std::string& name = "plot");

// An 8-bit RGB image, rows top to bottom.
struct PlotImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]
};

// The chart drawn in memory (what write_plot_png encodes); errors as layout_plot's.
PlotImage render_plot(const std::vector<Series>& series, const PlotOptions& options,
                      const std::string& name = "plot");

// Draws the chart and writes it to `path` as a PNG, atomically (temp file + rename).
// Throws rehyat::Error naming `path` on bad input (see layout_plot), when the file cannot
// be written, or when rehyat was built without libpng.
void write_plot_png(const std::string& path, const std::vector<Series>& series, const PlotOptions& options);

// Whether this build can write PNGs (libpng found at configure time).
bool plot_png_supported();

// A number in at most `significant` significant digits, compactly: trailing zeros dropped,
// plain notation for magnitudes in [0.001, 10^significant), else "1.5e12" / "2e-5" style
// (no "+", no leading exponent zeros); "nan", "inf", "-inf" for non-finite values.
std::string format_number(double value, int significant = 3);

}  // namespace rehyat::sweep
