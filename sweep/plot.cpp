// Sweep charts (sweep/plot.h): layout_plot decides ranges, ticks and rectangles; the
// drawing below is a small RGB canvas with anti-aliased lines and markers (coverage from
// a signed distance, blended over what is there), filled grid/frame rectangles and the
// 5×7 bitmap font; write_plot_png encodes it with libpng's simplified API into memory and
// writes the bytes atomically, as train/video_io.cpp does for sample images.
#include "sweep/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <tuple>

#include "core/check.h"
#include "sweep/plot_font.h"
#include "train/video_io.h"

namespace rehyat::sweep {
namespace {

using Text = std::u32string;

constexpr Rgb kWhite{255, 255, 255};
constexpr Rgb kInk{25, 25, 25};           // text
constexpr Rgb kFrame{60, 60, 60};         // frame and tick marks
constexpr Rgb kGrid{222, 222, 222};       // grid at the labelled ticks
constexpr Rgb kMinorGrid{240, 240, 240};  // grid at unlabelled decade multiples (log axes)
constexpr Rgb kLegendEdge{190, 190, 190};

// matplotlib's tab10.
constexpr Rgb kPalette[] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44},  {214, 39, 40},  {148, 103, 189},
                            {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207}};
constexpr int kMarkerShapes = 6;  // circle, square, triangle up, diamond, triangle down, plus

// Sizes in pixels at scale s (PlotLayout::scale); one place so layout and drawing agree.
struct Metrics {
  int s;
  int margin() const { return 10 * s; }
  int frame() const { return s; }          // frame thickness, drawn just outside the plot area
  int tick_length() const { return 4 * s; }
  int tick_gap() const { return 3 * s; }   // tick mark to its label
  int text_height() const { return font::kGlyphHeight * s; }
  int cap_height() const { return font::kCapHeight * s; }
  int text_row() const { return font::kLineHeight * s; }
  int label_gap() const { return 6 * s; }  // tick labels to the axis label
  double line_width() const { return 2.0 * s; }
  double marker_radius() const { return 3.5 * s; }
  // Legend: padding, swatch (a short line with the marker), gap to the text, row pitch.
  int legend_pad() const { return 6 * s; }
  int legend_swatch() const { return 22 * s; }
  int legend_gap() const { return 6 * s; }
  int legend_row() const { return 11 * s; }
  int legend_label_chars() const { return 36; }
  // Where the first row of x tick labels starts, below the plot area.
  int x_tick_label_offset() const { return frame() + tick_length() + tick_gap(); }
};

// ---- text -------------------------------------------------------------------------------

int width_of(const Text& text, int scale) {
  return text.empty() ? 0 : (int(text.size()) * font::kAdvance - (font::kAdvance - font::kGlyphWidth)) * scale;
}

// `text` cut to at most max_width pixels at `scale`, ending in "…" where cut.
Text fit_text(Text text, int max_width, int scale) {
  if (width_of(text, scale) <= max_width) return text;
  while (!text.empty() && width_of(text + U"…", scale) > max_width) text.pop_back();
  return text.empty() ? text : text + U"…";
}

// ---- numbers ----------------------------------------------------------------------------

std::string strip_zeros(std::string number) {
  if (number.find('.') != std::string::npos) {
    number.erase(number.find_last_not_of('0') + 1);
    if (number.back() == '.') number.pop_back();
  }
  return number == "-0" ? "0" : number;
}

std::string format_fixed(double value, int decimals) { return strip_zeros(fmt::format("{:.{}f}", value, decimals)); }

// "1.50e+12" -> "1.5e12".
std::string format_scientific(double value, int decimals) {
  const std::string text = fmt::format("{:.{}e}", value, decimals);
  const size_t e = text.find('e');
  return fmt::format("{}e{}", strip_zeros(text.substr(0, e)), std::stoi(text.substr(e + 1)));
}

int decimal_exponent(double value) { return int(std::floor(std::log10(std::abs(value)) + 1e-9)); }

// mantissa × 10^exponent for the ticks of log axes: plain from 0.001 to 1000, else "2e6".
std::string format_power(int mantissa, int exponent) {
  if (exponent >= -3 && exponent <= 3) return format_fixed(mantissa * std::pow(10.0, exponent), std::max(0, -exponent));
  return fmt::format("{}e{}", mantissa, exponent);
}

// Labels for multiples of `step` on one linear axis: one notation for the whole axis
// (scientific when the largest magnitude is >= 1e6 or < 1e-3), as many decimals as the
// step needs.
std::vector<AxisTick> label_linear(const std::vector<double>& values, double step) {
  double largest = 0;
  for (double v : values) largest = std::max(largest, std::abs(v));
  const bool scientific = largest >= 1e6 || (largest > 0 && largest < 1e-3);
  const int step_exponent = decimal_exponent(step);
  std::vector<AxisTick> ticks;
  for (double v : values) {
    std::string label = v == 0                ? "0"
                        : scientific          ? format_scientific(v, std::max(0, decimal_exponent(v) - step_exponent))
                                              : format_fixed(v, std::max(0, -step_exponent));
    ticks.push_back({v, std::move(label)});
  }
  return ticks;
}

// ---- ticks ------------------------------------------------------------------------------

// The 1-2-5 step nearest (in ratio) to span / target.
double nice_step(double span, int target) {
  const double raw = span / std::max(target, 1);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double normalized = raw / magnitude;  // [1, 10)
  return (normalized < 1.4142 ? 1 : normalized < 3.1623 ? 2 : normalized < 7.0711 ? 5 : 10) * magnitude;
}

// Multiples of `step` in [lo, hi], each computed as k · step (no accumulated error).
std::vector<double> multiples(double lo, double hi, double step) {
  std::vector<double> values;
  const double first = std::ceil(lo / step - 1e-9), last = std::floor(hi / step + 1e-9);
  for (double k = first; k <= last && values.size() < 1000; ++k) values.push_back(k * step == 0 ? 0.0 : k * step);
  return values;
}

std::vector<AxisTick> linear_ticks(double lo, double hi, int target) {
  const double step = nice_step(hi - lo, target);
  return label_linear(multiples(lo, hi, step), step);
}

struct LogTicks {
  std::vector<AxisTick> major;  // values in data units
  std::vector<double> minor;    // unlabelled grid lines, data units
};

// Ticks of a log axis showing 10^log_lo .. 10^log_hi: decades when at least three fall
// inside (every n-th when there are more than `target`), else 1-2-5 × 10^k when at least
// two of those do, else linear 1-2-5 steps. Minor grid lines at the remaining 1..9 × 10^k.
LogTicks log_ticks(double log_lo, double log_hi, int target) {
  LogTicks ticks;
  const auto inside = [&](double value) {
    const double l = std::log10(value);
    return l >= log_lo - 1e-9 && l <= log_hi + 1e-9;
  };
  const int first = int(std::ceil(log_lo - 1e-9)), last = int(std::floor(log_hi + 1e-9));
  const int lowest = int(std::floor(log_lo)), highest = int(std::ceil(log_hi));
  if (last - first + 1 >= 3) {
    const int every = std::max(1, int(std::ceil((last - first + 1) / double(target))));
    for (int k = first; k <= last; ++k)
      if ((k - first) % every == 0) ticks.major.push_back({std::pow(10.0, k), format_power(1, k)});
    for (int k = lowest; k <= highest; ++k)
      for (int m = 1; m <= (every == 1 ? 9 : 1); ++m) {
        const double value = m * std::pow(10.0, k);
        if (inside(value) && (m != 1 || (k - first) % every != 0)) ticks.minor.push_back(value);
      }
    return ticks;
  }
  std::vector<AxisTick> candidates;
  for (int k = lowest; k <= highest; ++k)
    for (int m : {1, 2, 5})
      if (inside(m * std::pow(10.0, k))) candidates.push_back({m * std::pow(10.0, k), format_power(m, k)});
  if (candidates.size() >= 2) {
    ticks.major = std::move(candidates);
    for (int k = lowest; k <= highest; ++k)
      for (int m : {3, 4, 6, 7, 8, 9})
        if (inside(m * std::pow(10.0, k))) ticks.minor.push_back(m * std::pow(10.0, k));
    return ticks;
  }
  ticks.major = linear_ticks(std::pow(10.0, log_lo), std::pow(10.0, log_hi), target);
  return ticks;
}

// ---- input ------------------------------------------------------------------------------

struct Extent {
  double x_lo = INFINITY, x_hi = -INFINITY;  // over every x
  double y_lo = INFINITY, y_hi = -INFINITY;  // over finite y
};

std::string series_name(const std::vector<Series>& series, size_t i) {
  return series[i].label.empty() ? fmt::format("series {}", i) : fmt::format("series {} ('{}')", i, series[i].label);
}

Extent check_input(const std::vector<Series>& series, const PlotOptions& options, const std::string& name) {
  REHYAT_CHECK(options.width >= 160 && options.height >= 120 && options.width <= 16384 && options.height <= 16384,
               "plot '{}': image size {}x{} is outside 160x120 .. 16384x16384", name, options.width, options.height);
  const auto categories = double(options.x_tick_labels.size());
  REHYAT_CHECK(!(options.log_x && categories > 0), "plot '{}': log_x and x_tick_labels (categorical x) exclude each other",
               name);
  Extent extent;
  for (size_t i = 0; i < series.size(); ++i) {
    const Series& s = series[i];
    REHYAT_CHECK(s.x.size() == s.y.size(), "plot '{}': {} has {} x values but {} y values", name,
                 series_name(series, i), s.x.size(), s.y.size());
    for (size_t j = 0; j < s.x.size(); ++j) {
      const double x = s.x[j], y = s.y[j];
      REHYAT_CHECK(std::isfinite(x), "plot '{}': {} has a non-finite x at index {}", name, series_name(series, i), j);
      REHYAT_CHECK(!options.log_x || x > 0, "plot '{}': {} has x = {} at index {}, but a log x axis needs x > 0",
                   name, series_name(series, i), x, j);
      REHYAT_CHECK(categories == 0 || (x >= 0 && x <= categories - 1),
                   "plot '{}': {} has x = {} at index {}, outside the {} categories [0, {}]", name,
                   series_name(series, i), x, j, categories, categories - 1);
      extent.x_lo = std::min(extent.x_lo, x);
      extent.x_hi = std::max(extent.x_hi, x);
      if (std::isfinite(y)) {
        extent.y_lo = std::min(extent.y_lo, y);
        extent.y_hi = std::max(extent.y_hi, y);
      }
    }
  }
  REHYAT_CHECK(extent.y_lo <= extent.y_hi, "plot '{}': nothing to plot (no point with finite x and y among {} series)",
               name, series.size());
  return extent;
}

// [lo, hi] widened by 5% of the span on each side; a (near) constant range by 5% of its
// value, or 1 around 0.
std::pair<double, double> pad_range(double lo, double hi) {
  const double span = hi - lo;
  if (span <= 1e-12 * std::max(std::abs(lo), std::abs(hi))) {
    const double centre = 0.5 * (lo + hi), half = centre == 0 ? 1.0 : 0.05 * std::abs(centre);
    return {centre - half, centre + half};
  }
  return {lo - 0.05 * span, hi + 0.05 * span};
}

// ---- geometry shared by layout and drawing -------------------------------------------------

// One series as runs of pixel points to join: sorted by x, broken at missing points
// (each point its own run when options.lines is off).
std::vector<std::vector<PixelPoint>> series_runs(const Series& series, const PlotLayout& layout, bool lines) {
  std::vector<size_t> order(series.x.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return series.x[a] < series.x[b]; });
  std::vector<std::vector<PixelPoint>> runs(1);
  for (size_t i : order) {
    if (!std::isfinite(series.y[i])) {
      if (!runs.back().empty()) runs.emplace_back();
      continue;
    }
    if (!lines && !runs.back().empty()) runs.emplace_back();
    runs.back().push_back(layout.to_pixel(series.x[i], series.y[i]));
  }
  if (runs.back().empty()) runs.pop_back();
  return runs;
}

struct LegendEntry {
  size_t series;  // index into the series
  Text label;     // fitted to legend_label_chars
};

std::vector<LegendEntry> legend_entries(const std::vector<Series>& series, const Metrics& metrics) {
  std::vector<LegendEntry> entries;
  const int max_width = metrics.legend_label_chars() * font::kAdvance * metrics.s;
  for (size_t i = 0; i < series.size(); ++i)
    if (!series[i].label.empty())
      entries.push_back({i, fit_text(font::decode_utf8(series[i].label), max_width, metrics.s)});
  return entries;
}

// Legend width and height for `entries`.
std::pair<int, int> legend_size(const std::vector<LegendEntry>& entries, const Metrics& m) {
  if (entries.empty()) return {0, 0};
  int label_width = 0;
  for (const LegendEntry& entry : entries) label_width = std::max(label_width, width_of(entry.label, m.s));
  return {2 * m.legend_pad() + m.legend_swatch() + m.legend_gap() + label_width,
          2 * m.legend_pad() + int(entries.size()) * m.legend_row() - (m.legend_row() - m.text_height())};
}

// Pixels of data (points, and samples along the lines) inside `rect`.
size_t data_pixels_inside(const std::vector<Series>& series, const PlotLayout& layout, bool lines,
                          const PixelRect& rect) {
  const auto inside = [&](double column, double row) {
    return column >= rect.left && column < rect.right() && row >= rect.top && row < rect.bottom();
  };
  size_t count = 0;
  for (const Series& s : series)
    for (const auto& run : series_runs(s, layout, lines))
      for (size_t i = 0; i < run.size(); ++i) {
        count += inside(run[i].column, run[i].row);
        if (i == 0) continue;
        const double length = std::hypot(run[i].column - run[i - 1].column, run[i].row - run[i - 1].row);
        const int samples = int(length / 3);
        for (int k = 1; k < samples; ++k) {
          const double t = double(k) / samples;
          count += inside(run[i - 1].column + t * (run[i].column - run[i - 1].column),
                          run[i - 1].row + t * (run[i].row - run[i - 1].row));
        }
      }
  return count;
}

// Largest tick label width.
int widest_label(const std::vector<AxisTick>& ticks, int scale) {
  int widest = 0;
  for (const AxisTick& tick : ticks) widest = std::max(widest, font::text_width(tick.label, scale));
  return widest;
}

}  // namespace

Rgb series_color(size_t index) { return kPalette[index % std::size(kPalette)]; }

PixelPoint PlotLayout::to_pixel(double x, double y) const {
  const double x0 = log_x ? std::log10(x_min) : x_min, x1 = log_x ? std::log10(x_max) : x_max;
  const double ax = log_x ? std::log10(x) : x;
  return {plot.left + (ax - x0) / (x1 - x0) * (plot.width - 1),
          plot.top + (plot.height - 1) - (y - y_min) / (y_max - y_min) * (plot.height - 1)};
}

PlotLayout layout_plot(const std::vector<Series>& series, const PlotOptions& options, const std::string& name) {
  const Extent extent = check_input(series, options, name);
  PlotLayout layout;
  layout.width = options.width;
  layout.height = options.height;
  layout.scale = options.width >= 1280 && options.height >= 800 ? 2 : 1;
  layout.log_x = options.log_x;
  const Metrics m{layout.scale};
  const int s = m.s;

  const bool categorical = !options.x_tick_labels.empty();
  if (categorical) {
    layout.x_min = -0.5;
    layout.x_max = double(options.x_tick_labels.size()) - 0.5;
  } else if (options.log_x) {
    const auto [lo, hi] = pad_range(std::log10(extent.x_lo), std::log10(extent.x_hi));
    layout.x_min = std::pow(10.0, lo);
    layout.x_max = std::pow(10.0, hi);
  } else {
    std::tie(layout.x_min, layout.x_max) = pad_range(extent.x_lo, extent.x_hi);
  }
  std::tie(layout.y_min, layout.y_max) = pad_range(extent.y_lo, extent.y_hi);

  // Title at twice the text scale, or once when that does not fit, cut to the image width.
  int top = m.margin() + m.text_height() / 2;  // room for the top y tick label
  if (!options.title.empty()) {
    const Text title = font::decode_utf8(options.title);
    const int room = options.width - 2 * m.margin();
    const int title_scale = width_of(title, 2 * s) <= room ? 2 * s : s;
    const int title_width = width_of(fit_text(title, room, title_scale), title_scale);
    layout.title = {(options.width - title_width) / 2, m.margin(), title_width, font::kGlyphHeight * title_scale};
    top = layout.title.bottom() + 4 * s + m.text_height();
  }

  const std::vector<LegendEntry> entries = legend_entries(series, m);
  const auto [legend_width, legend_height] = legend_size(entries, m);
  const bool has_x_label = !options.x_label.empty(), has_y_label = !options.y_label.empty();

  // The plot area for `tick_rows` rows of x tick labels, with or without the legend on the
  // right; y ticks follow from its height.
  const auto place = [&](int tick_rows, bool legend_outside) {
    layout.x_tick_rows = tick_rows;
    const int bottom = m.margin() + (has_x_label ? m.text_height() + m.label_gap() : 0) + m.x_tick_label_offset() +
                       tick_rows * m.text_row() - (m.text_row() - m.text_height());
    const int plot_height = options.height - top - bottom;
    layout.y_ticks = linear_ticks(layout.y_min, layout.y_max, std::clamp(plot_height / (50 * s), 3, 10));
    const int left = m.margin() + (has_y_label ? m.text_height() + m.label_gap() : 0) + widest_label(layout.y_ticks, s) +
                     m.frame() + m.tick_length() + m.tick_gap();
    const int right = m.margin() + 6 * s + (legend_outside ? legend_width + 8 * s : 0);
    layout.plot = {left, top, options.width - left - right, plot_height};
  };
  // x ticks for the current plot width, thinned until their labels do not collide.
  std::vector<double> minor_x;
  const auto place_x_ticks = [&]() {
    minor_x.clear();
    if (categorical) {
      layout.x_ticks.clear();
      for (size_t i = 0; i < options.x_tick_labels.size(); ++i) layout.x_ticks.push_back({double(i), options.x_tick_labels[i]});
      return;
    }
    for (int target = std::clamp(layout.plot.width / (90 * s), 3, 10);; --target) {
      if (options.log_x) {
        LogTicks ticks = log_ticks(std::log10(layout.x_min), std::log10(layout.x_max), target);
        layout.x_ticks = std::move(ticks.major);
        minor_x = std::move(ticks.minor);
      } else {
        layout.x_ticks = linear_ticks(layout.x_min, layout.x_max, target);
      }
      double closest = INFINITY;
      for (size_t i = 1; i < layout.x_ticks.size(); ++i)
        closest = std::min(closest, layout.to_pixel(layout.x_ticks[i].value, layout.y_min).column -
                                        layout.to_pixel(layout.x_ticks[i - 1].value, layout.y_min).column);
      if (target <= 2 || widest_label(layout.x_ticks, s) + 8 * s <= closest) return;
    }
  };
  const auto place_all = [&](bool legend_outside) {
    place(1, legend_outside);
    place_x_ticks();
    // Categories whose labels overlap alternate between two rows.
    const double slot = layout.plot.width / std::max<double>(1, double(options.x_tick_labels.size()));
    if (categorical && widest_label(layout.x_ticks, s) + 4 * s > slot) {
      place(2, legend_outside);
      place_x_ticks();
    }
  };
  place_all(false);
  // The legend goes in the corner of the plot area covering the fewest data pixels (ties:
  // top right, top left, bottom right, bottom left) when that covers none, or when the
  // legend beside the plot would take more than half its width; else beside it.
  if (!entries.empty()) {
    const int inset = 6 * s;
    const PixelRect& p = layout.plot;
    const PixelRect corners[] = {
        {p.right() - inset - legend_width, p.top + inset, legend_width, legend_height},
        {p.left + inset, p.top + inset, legend_width, legend_height},
        {p.right() - inset - legend_width, p.bottom() - inset - legend_height, legend_width, legend_height},
        {p.left + inset, p.bottom() - inset - legend_height, legend_width, legend_height}};
    size_t least_covered = SIZE_MAX;
    if (legend_width + 2 * inset <= p.width && legend_height + 2 * inset <= p.height)
      for (const PixelRect& corner : corners) {
        const size_t covered = data_pixels_inside(series, layout, options.lines, corner);
        if (covered < least_covered) {
          least_covered = covered;
          layout.legend = corner;
        }
      }
    const bool room_beside = legend_width + 8 * s <= p.width / 2;
    if (least_covered != 0 && (room_beside || least_covered == SIZE_MAX)) {
      place_all(true);
      layout.legend = {layout.plot.right() + m.frame() + 8 * s, layout.plot.top, legend_width,
                       std::min(legend_height, layout.plot.height)};
    }
  }
  REHYAT_CHECK(layout.plot.width >= 40 * s && layout.plot.height >= 40 * s,
               "plot '{}': a {}x{} image leaves only {}x{} pixels for the data (labels or legend too long)", name,
               options.width, options.height, layout.plot.width, layout.plot.height);
  layout.x_minor = std::move(minor_x);

  const int label_top = layout.plot.bottom() + m.x_tick_label_offset() + layout.x_tick_rows * m.text_row() -
                        (m.text_row() - m.text_height()) + m.label_gap();
  if (has_x_label) {
    const int w = width_of(fit_text(font::decode_utf8(options.x_label), options.width - 2 * m.margin(), s), s);
    const int centred = layout.plot.left + (layout.plot.width - w) / 2;
    layout.x_label = {std::clamp(centred, m.margin(), options.width - m.margin() - w), label_top, w, m.text_height()};
  }
  if (has_y_label) {
    const int h = width_of(fit_text(font::decode_utf8(options.y_label), options.height - 2 * m.margin(), s), s);
    const int centred = layout.plot.top + (layout.plot.height - h) / 2;
    layout.y_label = {m.margin(), std::clamp(centred, m.margin(), options.height - m.margin() - h), m.text_height(), h};
  }
  return layout;
}

namespace {

// ---- drawing ----------------------------------------------------------------------------

class Canvas {
 public:
  Canvas(int width, int height) : clip_{0, 0, width, height} {
    image_.width = width;
    image_.height = height;
    image_.rgb.assign(size_t(width) * size_t(height) * 3, 255);
  }

  PlotImage take() { return std::move(image_); }
  // Drawing outside `rect` is dropped.
  void clip(const PixelRect& rect) { clip_ = rect; }
  void unclip() { clip_ = {0, 0, image_.width, image_.height}; }

  // colour over the pixel with opacity alpha in [0, 1].
  void blend(int column, int row, Rgb colour, double alpha) {
    if (alpha <= 0 || column < clip_.left || column >= clip_.right() || row < clip_.top || row >= clip_.bottom()) return;
    uint8_t* pixel = &image_.rgb[(size_t(row) * size_t(image_.width) + size_t(column)) * 3];
    alpha = std::min(alpha, 1.0);
    for (int c = 0; c < 3; ++c) pixel[c] = uint8_t(std::lround(pixel[c] + (colour[c] - pixel[c]) * alpha));
  }

  void fill(const PixelRect& rect, Rgb colour) {
    for (int row = rect.top; row < rect.bottom(); ++row)
      for (int column = rect.left; column < rect.right(); ++column) blend(column, row, colour, 1.0);
  }

  // The anti-aliased shape {signed_distance(dx, dy) <= 0} around (centre), where dx, dy
  // are a pixel's offsets from the centre and the shape lies within `extent` of it.
  template <typename SignedDistance>
  void shape(PixelPoint centre, double extent, Rgb colour, SignedDistance&& signed_distance) {
    for (int row = int(std::floor(centre.row - extent - 1)); row <= int(std::ceil(centre.row + extent + 1)); ++row)
      for (int column = int(std::floor(centre.column - extent - 1)); column <= int(std::ceil(centre.column + extent + 1));
           ++column)
        blend(column, row, colour, std::clamp(0.5 - signed_distance(column - centre.column, row - centre.row), 0.0, 1.0));
  }

  // An anti-aliased segment `width` pixels wide with round ends.
  void line(PixelPoint a, PixelPoint b, double width, Rgb colour) {
    const double dx = b.column - a.column, dy = b.row - a.row, length2 = dx * dx + dy * dy;
    const double reach = width / 2 + 1;
    const int row0 = int(std::floor(std::min(a.row, b.row) - reach)), row1 = int(std::ceil(std::max(a.row, b.row) + reach));
    const int col0 = int(std::floor(std::min(a.column, b.column) - reach));
    const int col1 = int(std::ceil(std::max(a.column, b.column) + reach));
    for (int row = row0; row <= row1; ++row)
      for (int column = col0; column <= col1; ++column) {
        const double px = column - a.column, py = row - a.row;
        const double t = length2 > 0 ? std::clamp((px * dx + py * dy) / length2, 0.0, 1.0) : 0.0;
        const double distance = std::hypot(px - t * dx, py - t * dy);
        blend(column, row, colour, std::clamp(width / 2 + 0.5 - distance, 0.0, 1.0));
      }
  }

  // Text with its top-left corner at (left, top); `upright` turns it 90° counter-clockwise
  // (read bottom to top), with (left, top) the top-left corner of its bounding box.
  void text(int left, int top, const Text& text, int scale, Rgb colour, bool upright = false) {
    const int length = width_of(text, scale);
    for (size_t i = 0; i < text.size(); ++i) {
      const font::Glyph& glyph = font::glyph(text[i]);
      for (int gy = 0; gy < font::kGlyphHeight; ++gy)
        for (int gx = 0; gx < font::kGlyphWidth; ++gx) {
          if (!(glyph[size_t(gy)] >> (font::kGlyphWidth - 1 - gx) & 1)) continue;
          const int along = (int(i) * font::kAdvance + gx) * scale;  // from the text's start
          const PixelRect block = upright ? PixelRect{left + gy * scale, top + length - along - scale, scale, scale}
                                          : PixelRect{left + along, top + gy * scale, scale, scale};
          fill(block, colour);
        }
    }
  }

 private:
  PlotImage image_;
  PixelRect clip_;
};

// Signed distance (pixels) from offset (dx, dy) to marker `shape` of radius r.
double marker_distance(int shape, double r, double dx, double dy) {
  switch (shape) {
    case 0: return std::hypot(dx, dy) - r;                                         // circle
    case 1: return std::max(std::abs(dx), std::abs(dy)) - 0.85 * r;                // square
    case 2: return std::max(dy, 0.866 * std::abs(dx) - 0.5 * dy) - 0.6 * r;        // triangle up
    case 3: return (std::abs(dx) + std::abs(dy) - 1.25 * r) * 0.7071;              // diamond
    case 4: return std::max(-dy, 0.866 * std::abs(dx) + 0.5 * dy) - 0.6 * r;       // triangle down
    default: {                                                                     // plus
      const double arm = 1.1 * r, half_thickness = 0.4 * r;
      return std::min(std::max(std::abs(dx) - arm, std::abs(dy) - half_thickness),
                      std::max(std::abs(dy) - arm, std::abs(dx) - half_thickness));
    }
  }
}

// A marker with a thin white rim, so it stands out over lines.
void draw_marker(Canvas& canvas, PixelPoint at, size_t series_index, const Metrics& m) {
  const int shape = int(series_index % kMarkerShapes);
  const double r = m.marker_radius(), rim = 0.8 * m.s;
  canvas.shape(at, 1.6 * r + rim, kWhite, [&](double dx, double dy) { return marker_distance(shape, r, dx, dy) - rim; });
  canvas.shape(at, 1.6 * r, series_color(series_index),
               [&](double dx, double dy) { return marker_distance(shape, r, dx, dy); });
}

void draw_grid(Canvas& canvas, const PlotLayout& layout, const Metrics& m) {
  const PixelRect& p = layout.plot;
  canvas.clip(p);
  const auto vertical = [&](double x, Rgb colour) {
    canvas.fill({int(std::lround(layout.to_pixel(x, layout.y_min).column)), p.top, m.s, p.height}, colour);
  };
  for (double x : layout.x_minor) vertical(x, kMinorGrid);
  for (const AxisTick& tick : layout.x_ticks) vertical(tick.value, kGrid);
  for (const AxisTick& tick : layout.y_ticks)
    canvas.fill({p.left, int(std::lround(layout.to_pixel(layout.x_min, tick.value).row)), p.width, m.s}, kGrid);
  canvas.unclip();
}

void draw_axes(Canvas& canvas, const PlotLayout& layout, const Metrics& m) {
  const PixelRect& p = layout.plot;
  const int f = m.frame();
  canvas.fill({p.left - f, p.top - f, p.width + 2 * f, f}, kFrame);
  canvas.fill({p.left - f, p.bottom(), p.width + 2 * f, f}, kFrame);
  canvas.fill({p.left - f, p.top, f, p.height}, kFrame);
  canvas.fill({p.right(), p.top, f, p.height}, kFrame);
  for (size_t i = 0; i < layout.x_ticks.size(); ++i) {
    const AxisTick& tick = layout.x_ticks[i];
    const int column = int(std::lround(layout.to_pixel(tick.value, layout.y_min).column));
    canvas.fill({column, p.bottom() + f, m.s, m.tick_length()}, kFrame);
    const Text label = font::decode_utf8(tick.label);
    const int width = width_of(label, m.s);
    const int left = std::clamp(column - width / 2, 0, layout.width - width);
    const int row = int(i % size_t(layout.x_tick_rows));
    canvas.text(left, p.bottom() + m.x_tick_label_offset() + row * m.text_row(), label, m.s, kInk);
  }
  for (const AxisTick& tick : layout.y_ticks) {
    const int row = int(std::lround(layout.to_pixel(layout.x_min, tick.value).row));
    canvas.fill({p.left - f - m.tick_length(), row, m.tick_length(), m.s}, kFrame);
    const Text label = font::decode_utf8(tick.label);
    canvas.text(p.left - f - m.tick_length() - m.tick_gap() - width_of(label, m.s), row - m.cap_height() / 2, label,
                m.s, kInk);
  }
}

void draw_texts(Canvas& canvas, const PlotLayout& layout, const PlotOptions& options, const Metrics& m) {
  if (layout.title.width > 0) {
    const int scale = layout.title.height / font::kGlyphHeight;
    canvas.text(layout.title.left, layout.title.top, fit_text(font::decode_utf8(options.title), layout.title.width, scale),
                scale, kInk);
  }
  if (layout.x_label.width > 0)
    canvas.text(layout.x_label.left, layout.x_label.top,
                fit_text(font::decode_utf8(options.x_label), layout.x_label.width, m.s), m.s, kInk);
  if (layout.y_label.width > 0)
    canvas.text(layout.y_label.left, layout.y_label.top,
                fit_text(font::decode_utf8(options.y_label), layout.y_label.height, m.s), m.s, kInk, true);
}

void draw_legend(Canvas& canvas, const PlotLayout& layout, const std::vector<Series>& series, bool lines,
                 const Metrics& m) {
  const PixelRect& box = layout.legend;
  if (box.width == 0) return;
  const std::vector<LegendEntry> entries = legend_entries(series, m);
  canvas.fill(box, kLegendEdge);
  canvas.fill({box.left + m.s, box.top + m.s, box.width - 2 * m.s, box.height - 2 * m.s}, kWhite);
  // Rows that fit; when some do not, the last visible row says how many are left out.
  const int fitting = (box.height - 2 * m.legend_pad() + m.legend_row() - m.text_height()) / m.legend_row();
  const size_t shown = entries.size() <= size_t(fitting) ? entries.size() : size_t(std::max(fitting - 1, 0));
  canvas.clip(box);
  for (size_t i = 0; i < shown; ++i) {
    const int top = box.top + m.legend_pad() + int(i) * m.legend_row();
    const double middle = top + (m.cap_height() - m.s) / 2.0;
    const int left = box.left + m.legend_pad();
    const size_t index = entries[i].series;
    if (lines) canvas.line({double(left), middle}, {double(left + m.legend_swatch()), middle}, m.line_width(), series_color(index));
    draw_marker(canvas, {left + m.legend_swatch() / 2.0, middle}, index, m);
    canvas.text(left + m.legend_swatch() + m.legend_gap(), top, entries[i].label, m.s, kInk);
  }
  if (shown < entries.size()) {
    const int top = box.top + m.legend_pad() + int(shown) * m.legend_row();
    canvas.text(box.left + m.legend_pad(), top, font::decode_utf8(fmt::format("+{} more", entries.size() - shown)), m.s,
                kInk);
  }
  canvas.unclip();
}

}  // namespace

PlotImage render_plot(const std::vector<Series>& series, const PlotOptions& options, const std::string& name) {
  const PlotLayout layout = layout_plot(series, options, name);
  const Metrics m{layout.scale};
  Canvas canvas(layout.width, layout.height);
  draw_grid(canvas, layout, m);
  // Lines of every series first, then the markers, so no line hides a point.
  canvas.clip(layout.plot);
  if (options.lines)
    for (size_t i = 0; i < series.size(); ++i)
      for (const auto& run : series_runs(series[i], layout, true))
        for (size_t k = 1; k < run.size(); ++k) canvas.line(run[k - 1], run[k], m.line_width(), series_color(i));
  for (size_t i = 0; i < series.size(); ++i)
    for (const auto& run : series_runs(series[i], layout, options.lines))
      for (const PixelPoint& point : run) draw_marker(canvas, point, i, m);
  canvas.unclip();
  draw_axes(canvas, layout, m);
  draw_texts(canvas, layout, options, m);
  draw_legend(canvas, layout, series, options.lines, m);
  return canvas.take();
}

void write_plot_png(const std::string& path, const std::vector<Series>& series, const PlotOptions& options) {
  const PlotImage image = render_plot(series, options, path);
  train::write_rgb_png(path, image.width, image.height, image.rgb.data());
}

bool plot_png_supported() { return train::png_supported(); }

std::string format_number(double value, int significant) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return "0";
  significant = std::clamp(significant, 1, 17);
  // The exponent after rounding to `significant` digits (999.7 -> 1.00e3 at 3 digits).
  const std::string scientific = fmt::format("{:.{}e}", value, significant - 1);
  const int exponent = std::stoi(scientific.substr(scientific.find('e') + 1));
  if (exponent >= -3 && exponent < significant) return format_fixed(value, significant - 1 - exponent);
  return format_scientific(value, significant - 1);
}

}  // namespace rehyat::sweep
