// PNG (libpng's simplified png_image API, written to memory) and GIF (giflib's encoder with
// an output callback into memory) for [-1, 1] RGB videos; the bytes then go through
// AtomicFileWriter so a reader never sees a half-written image.
#include "train/video_io.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/atomic_file.h"
#include "core/check.h"

#ifdef REHYAT_PNG
#include <png.h>
#endif
#ifdef REHYAT_GIF
#include <gif_lib.h>
#endif

namespace rehyat::train {
namespace {

uint8_t to_byte(float v) {
  if (std::isnan(v)) return 0;
  return uint8_t(std::lround(std::clamp((double(v) + 1.0) * 127.5, 0.0, 255.0)));
}

// Host f32 copy of videos [B, 3, T, H, W] with its sizes; errors name `what`.
struct HostVideos {
  std::vector<float> values;  // [B, 3, T, H, W]
  int64_t batch, frames, height, width;
  float at(int64_t b, int64_t c, int64_t t, int64_t y, int64_t x) const {
    return values[size_t((((b * 3 + c) * frames + t) * height + y) * width + x)];
  }
};

HostVideos host_videos(const Tensor& videos, const char* what) {
  REHYAT_CHECK(videos.defined() && videos.dim() == 5 && videos.size(1) == 3 && is_floating(videos.dtype()),
               "{}: expected an RGB float video [B, 3, T, H, W] (got {})", what,
               videos.defined() ? videos.str() : "undefined");
  REHYAT_CHECK(videos.numel() > 0, "{}: empty video {}", what, videos.str());
  const Tensor host = videos.to(Device::cpu()).to(DType::F32).contiguous();
  const float* data = host.data<float>();
  return {std::vector<float>(data, data + host.numel()), videos.size(0), videos.size(2), videos.size(3),
          videos.size(4)};
}

void check_scale(int scale, const char* what) {
  REHYAT_CHECK(scale >= 1 && scale <= 64, "{}: scale must be in [1, 64] (got {})", what, scale);
}

// 8-bit RGB image, rows top to bottom.
struct RgbImage {
  int64_t width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]
};

// Video b's frames side by side in row b, each pixel a scale × scale block, 1-px white
// separators between frames and between rows.
RgbImage compose_grid(const HostVideos& v, int scale) {
  const int64_t cell_w = v.width * scale, cell_h = v.height * scale;
  RgbImage image;
  image.width = v.frames * cell_w + (v.frames - 1);
  image.height = v.batch * cell_h + (v.batch - 1);
  REHYAT_CHECK(image.width <= 65535 && image.height <= 65535, "video image of {}x{} pixels is too large",
               image.width, image.height);
  image.rgb.assign(size_t(image.width * image.height * 3), 255);
  for (int64_t b = 0; b < v.batch; ++b)
    for (int64_t t = 0; t < v.frames; ++t)
      for (int64_t py = 0; py < cell_h; ++py)
        for (int64_t px = 0; px < cell_w; ++px) {
          const int64_t row = b * (cell_h + 1) + py, col = t * (cell_w + 1) + px;
          uint8_t* pixel = &image.rgb[size_t((row * image.width + col) * 3)];
          for (int64_t c = 0; c < 3; ++c) pixel[c] = to_byte(v.at(b, c, t, py / scale, px / scale));
        }
  return image;
}

[[maybe_unused]] void write_bytes_atomically(const std::string& path, const void* data, size_t bytes) {
  AtomicFileWriter writer(path);
  writer.write(data, bytes);
  writer.commit();
}

void write_png(const std::string& path, const RgbImage& image) {
  write_rgb_png(path, image.width, image.height, image.rgb.data());
}

}  // namespace

void write_rgb_png(const std::string& path, int64_t width, int64_t height, const uint8_t* rgb) {
#ifdef REHYAT_PNG
  REHYAT_CHECK(width > 0 && height > 0 && width <= 65535 && height <= 65535,
               "cannot write '{}': an image of {}x{} pixels", path, width, height);
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  png.width = png_uint_32(width);
  png.height = png_uint_32(height);
  png.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;  // first call: the encoded size only
  REHYAT_CHECK(png_image_write_to_memory(&png, nullptr, &size, 0, rgb, 0, nullptr), "cannot write '{}': libpng: {}",
               path, png.message);
  std::vector<uint8_t> bytes(size);
  REHYAT_CHECK(png_image_write_to_memory(&png, bytes.data(), &size, 0, rgb, 0, nullptr),
               "cannot write '{}': libpng: {}", path, png.message);
  write_bytes_atomically(path, bytes.data(), size);
#else
  (void)width, (void)height, (void)rgb;
  REHYAT_FAIL("cannot write '{}': rehyat was built without libpng (install libpng-dev and reconfigure)", path);
#endif
}

bool png_supported() {
#ifdef REHYAT_PNG
  return true;
#else
  return false;
#endif
}

void write_png_strip(const std::string& path, const Tensor& video, int scale) {
  REHYAT_CHECK(video.defined() && video.dim() == 4, "write_png_strip '{}': expected a video [3, T, H, W] (got {})",
               path, video.defined() ? video.str() : "undefined");
  write_video_grid(path, video.unsqueeze(0), scale);
}

void write_video_grid(const std::string& path, const Tensor& videos, int scale) {
  check_scale(scale, "write_video_grid");
  write_png(path, compose_grid(host_videos(videos, "write_video_grid"), scale));
}

#ifdef REHYAT_GIF
namespace {

// giflib output callback: appends to the std::vector<uint8_t> in UserData.
int append_to_buffer(GifFileType* gif, const GifByteType* data, int length) {
  auto* buffer = static_cast<std::vector<uint8_t>*>(gif->UserData);
  buffer->insert(buffer->end(), data, data + length);
  return length;
}

// Index into the 6×6×6 cube of levels 0, 51, ..., 255: 36·r + 6·g + b.
GifPixelType cube_index(float r, float g, float b) {
  auto level = [](float v) { return (int(to_byte(v)) * 5 + 127) / 255; };
  return GifPixelType(36 * level(r) + 6 * level(g) + level(b));
}

// Closes the encoder on every path; close() reports the final flush's error.
class GifEncoder {
 public:
  GifEncoder(const std::string& path, std::vector<uint8_t>* buffer) : path_(path) {
    int error = 0;
    gif_ = EGifOpen(buffer, append_to_buffer, &error);
    REHYAT_CHECK(gif_ != nullptr, "cannot write '{}': giflib: {}", path_, GifErrorString(error));
  }
  ~GifEncoder() {
    if (gif_) EGifCloseFile(gif_, nullptr);
  }
  GifFileType* get() const { return gif_; }
  void check(int status, const char* what) const {
    REHYAT_CHECK(status == GIF_OK, "cannot write '{}': giflib {}: {}", path_, what, GifErrorString(gif_->Error));
  }
  void close() {
    int error = 0;
    const int status = EGifCloseFile(gif_, &error);
    gif_ = nullptr;
    REHYAT_CHECK(status == GIF_OK, "cannot write '{}': giflib: {}", path_, GifErrorString(error));
  }

 private:
  std::string path_;
  GifFileType* gif_ = nullptr;
};

}  // namespace
#endif

bool gif_supported() {
#ifdef REHYAT_GIF
  return true;
#else
  return false;
#endif
}

void write_gif(const std::string& path, const Tensor& video, int scale, int frame_ms) {
  check_scale(scale, "write_gif");
  REHYAT_CHECK(frame_ms >= 1, "write_gif '{}': frame_ms must be >= 1 (got {})", path, frame_ms);
  REHYAT_CHECK(video.defined() && video.dim() == 4, "write_gif '{}': expected a video [3, T, H, W] (got {})", path,
               video.defined() ? video.str() : "undefined");
#ifdef REHYAT_GIF
  const HostVideos v = host_videos(video.unsqueeze(0), "write_gif");
  const int width = int(v.width * scale), height = int(v.height * scale);
  REHYAT_CHECK(width <= 65535 && height <= 65535, "write_gif '{}': {}x{} pixels is too large", path, width, height);

  std::vector<GifColorType> palette(256, GifColorType{0, 0, 0});  // [256]: the cube, then black
  for (int i = 0; i < 216; ++i)
    palette[size_t(i)] =
        GifColorType{GifByteType(51 * (i / 36)), GifByteType(51 * (i / 6 % 6)), GifByteType(51 * (i % 6))};

  std::vector<uint8_t> bytes;
  {
    GifEncoder gif(path, &bytes);
    EGifSetGifVersion(gif.get(), true);
    ColorMapObject* colour_map = GifMakeMapObject(256, palette.data());
    REHYAT_CHECK(colour_map != nullptr, "cannot write '{}': giflib: out of memory", path);
    const int screen = EGifPutScreenDesc(gif.get(), width, height, 8, 0, colour_map);
    GifFreeMapObject(colour_map);  // the encoder keeps its own copy
    gif.check(screen, "screen descriptor");
    // NETSCAPE2.0 application extension: loop count 0 = forever.
    const GifByteType loop[3] = {1, 0, 0};
    gif.check(EGifPutExtensionLeader(gif.get(), APPLICATION_EXT_FUNC_CODE), "loop extension");
    gif.check(EGifPutExtensionBlock(gif.get(), 11, "NETSCAPE2.0"), "loop extension");
    gif.check(EGifPutExtensionBlock(gif.get(), 3, loop), "loop extension");
    gif.check(EGifPutExtensionTrailer(gif.get()), "loop extension");

    GraphicsControlBlock timing{DISPOSE_DO_NOT, false, std::max(1, (frame_ms + 5) / 10), NO_TRANSPARENT_COLOR};
    GifByteType timing_bytes[4];
    const size_t timing_size = EGifGCBToExtension(&timing, timing_bytes);
    std::vector<GifPixelType> line(static_cast<size_t>(width));  // one output row of palette indices
    for (int64_t t = 0; t < v.frames; ++t) {
      gif.check(EGifPutExtension(gif.get(), GRAPHICS_EXT_FUNC_CODE, int(timing_size), timing_bytes), "frame delay");
      gif.check(EGifPutImageDesc(gif.get(), 0, 0, width, height, false, nullptr), "image descriptor");
      for (int y = 0; y < height; ++y) {
        for (int x = 0; x < width; ++x) {
          const int64_t sy = y / scale, sx = x / scale;
          line[size_t(x)] = cube_index(v.at(0, 0, t, sy, sx), v.at(0, 1, t, sy, sx), v.at(0, 2, t, sy, sx));
        }
        gif.check(EGifPutLine(gif.get(), line.data(), width), "pixels");
      }
    }
    gif.close();
  }
  write_bytes_atomically(path, bytes.data(), bytes.size());
#else
  REHYAT_FAIL("cannot write '{}': rehyat was built without giflib (install libgif-dev and reconfigure)", path);
#endif
}

}  // namespace rehyat::train
