// resize_region: a rectangle of a bicubic, antialiased resize, computed from the
// source pixels it needs only. The data loader's window pipeline renders each LoMaR
// window of a random-resized crop with it, so its cost follows the windows, not the
// crop's output size.
//
// uint8: the result is, to the bit, the same rectangle of torchvision's uint8 resize of
// the crop (torch's AVX2 uint8 antialias path, itself Pillow's algorithm): Keys' cubic
// with a = -0.5 widened by the downscaling factor, taps clipped to the crop, weights
// normalised then quantised to 16-bit fixed point with the precision the largest
// weight of the whole axis allows; a horizontal pass rounded to uint8, then a
// vertical pass rounded to uint8. A fractional box (a crop of a JPEG decoded at
// reduced scale) uses the same formulas with its fractional origin.
// uint16: the same algorithm with 32-bit weights (the largest weight of an axis takes
// 31 bits, at most 32 fractional bits) and int64 sums, each pass rounded and clamped
// to 0..65535 (Pillow's 16-bit resize, but for one unit here and there, where its
// sums above 65535 are clipped correctly): within 1.25 units of the exact resize (two
// roundings) where no pass clamps.
// float32: the same taps, the normalised weights rounded to float32, sums in float64
// in tap order (the products are exact, so a fused multiply-add changes nothing),
// each pass rounded to float32; not clamped (bicubic overshoots, as torch's float
// resize does). Pillow's "F" mode resize, with float32 weights.
//
// CPU only, one thread: it runs inside the data loader's worker processes.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "../lomar_ops.h"

namespace lomar_ops {

namespace {

double keys_cubic(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// How each pixel type is resampled: its accumulator, the type between the passes
// (mid_t), its weights (from AxisTaps) and how a sum becomes a value. Integer types
// sum in fixed point: the largest weight of an axis is quantised to kWeightBits bits,
// with at most kMaxPrecision fractional bits (so that the sums fit acc_t, and float64
// exactly: the reference's products).
template <typename pix_t>
struct Pixel;

template <>
struct Pixel<uint8_t> {
  using acc_t = int32_t;
  using mid_t = uint8_t;  // clamped to 0..255 between the passes (Pillow's, torch's)
  static constexpr int kWeightBits = 15, kMaxPrecision = 32 - 8 - 2;  // int32 sums
  static constexpr int32_t kMax = 255;
};

template <>
struct Pixel<uint16_t> {
  using acc_t = int64_t;
  using mid_t = uint16_t;  // clamped to 0..65535 between the passes (Pillow's "I;16")
  // 65535 * (sum of |weights| < 1.5 * 2^32) < 2^49: int64, and exact in float64.
  static constexpr int kWeightBits = 31, kMaxPrecision = 32;
  static constexpr int32_t kMax = 65535;
};

template <>
struct Pixel<float> {
  using acc_t = double;
  using mid_t = float;
  static constexpr int kWeightBits = 0;  // float weights, no fixed point
};

// Taps of one axis for every output position: output i reads `size[i]` source pixels
// from `first[i]` (absolute index) with weights w[i * width ...] (fixed point, with
// `precision` fractional bits, the same for the whole axis: it is set by the axis's
// largest weight) or wf[i * width ...] (the normalised weights rounded to float32).
struct AxisTaps {
  std::vector<int64_t> first, size;
  std::vector<int32_t> w;
  std::vector<float> wf;
  int64_t width = 0;
  int precision = 0;
};

// weight_bits 0: float32 weights; else fixed point as Pixel<...> says.
AxisTaps axis_taps(int64_t in_size, double start, double length, int64_t out_size,
                   int weight_bits, int max_precision) {
  const double scale = length / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  AxisTaps taps;
  taps.width = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  const int64_t width = taps.width;
  // Coordinates relative to the box's first whole pixel: for an integer box they are
  // torchvision's crop coordinates exactly.
  const int64_t origin = static_cast<int64_t>(std::floor(start));
  const double offset = start - static_cast<double>(origin);
  const int64_t limit = std::min<int64_t>(static_cast<int64_t>(std::ceil(start + length)),
                                          in_size) - origin;
  std::vector<double> weights(out_size * width, 0.0);
  taps.first.resize(out_size);
  taps.size.resize(out_size);
  double max_weight = 0.0;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = offset + scale * (static_cast<double>(i) + 0.5);
    const int64_t xmin = std::max<int64_t>(static_cast<int64_t>(std::floor(center - support + 0.5)), 0);
    const int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), limit);
    double* wi = &weights[i * width];
    double total = 0.0;
    for (int64_t j = 0; j < xmax - xmin; ++j) {
      wi[j] = keys_cubic((static_cast<double>(j + xmin) - center + 0.5) / filter_scale);
      total += wi[j];
    }
    for (int64_t j = 0; j < xmax - xmin; ++j) {
      if (total != 0.0) wi[j] /= total;
      max_weight = std::max(max_weight, wi[j]);
    }
    taps.first[i] = origin + xmin;
    taps.size[i] = std::max<int64_t>(xmax - xmin, 0);
  }
  if (weight_bits == 0) {
    taps.wf.assign(weights.begin(), weights.end());  // rounded to float32
    return taps;
  }
  const int64_t weight_limit = int64_t(1) << weight_bits;
  while (taps.precision < max_precision &&
         static_cast<int64_t>(0.5 + max_weight * std::ldexp(1.0, taps.precision + 1)) <
             weight_limit) {
    ++taps.precision;
  }
  const double one = std::ldexp(1.0, taps.precision);
  taps.w.resize(out_size * width);
  for (int64_t i = 0; i < out_size * width; ++i) {
    const double v = weights[i] * one;
    taps.w[i] = static_cast<int32_t>(v < 0.0 ? v - 0.5 : v + 0.5);  // to nearest, ties away
  }
  return taps;
}

template <typename pix_t>
const auto* weights_of(const AxisTaps& t) {
  if constexpr (std::is_same_v<pix_t, float>) {
    return t.wf.data();
  } else {
    return t.w.data();
  }
}

// The sum a pass starts from: half a unit (rounding to nearest by the shift), or 0.
template <typename pix_t>
typename Pixel<pix_t>::acc_t start_of(int precision) {
  using acc_t = typename Pixel<pix_t>::acc_t;
  if constexpr (std::is_same_v<pix_t, float>) {
    return acc_t(0);
  } else {
    return acc_t(1) << (precision - 1);
  }
}

// A sum -> a value of type out_t: pix_t (rounded, and clamped for integers) or, after
// the horizontal pass, mid_t (the same for every type today).
template <typename pix_t, typename out_t>
inline out_t finish(typename Pixel<pix_t>::acc_t acc, int precision) {
  using acc_t = typename Pixel<pix_t>::acc_t;
  if constexpr (std::is_same_v<pix_t, float>) {
    return static_cast<float>(acc);
  } else if constexpr (std::is_same_v<out_t, pix_t>) {
    return static_cast<pix_t>(std::clamp<acc_t>(acc >> precision, 0, Pixel<pix_t>::kMax));
  } else {
    return static_cast<out_t>(acc >> precision);
  }
}

// One region: the horizontal pass over the source rows [row0, row0 + rows) its output
// rows read, for output columns [x0, x0 + cols), into tmp (rows, cols, C); then the
// vertical pass for output rows [y0, y0 + out_rows) into out (C, out_rows, cols).
template <int64_t C, typename pix_t>
void resample(const pix_t* src, int64_t src_w, int64_t channels, const AxisTaps& tx,
              const AxisTaps& ty, int64_t y0, int64_t x0, int64_t out_rows, int64_t cols,
              pix_t* out) {
  using acc_t = typename Pixel<pix_t>::acc_t;
  using mid_t = typename Pixel<pix_t>::mid_t;
  const int64_t ch_n = C > 0 ? C : channels;
  int64_t row0 = std::numeric_limits<int64_t>::max(), row1 = 0;
  for (int64_t y = y0; y < y0 + out_rows; ++y) {
    row0 = std::min(row0, ty.first[y]);
    row1 = std::max(row1, ty.first[y] + ty.size[y]);
  }
  const int64_t rows = std::max<int64_t>(row1 - row0, 0);
  // The horizontal pass runs on a transposed copy of the source rectangle it reads,
  // so that, like the vertical pass, it sums whole contiguous lines (all rows and
  // channels of one source column) with one weight: the loops vectorise. Each line's
  // sum runs over the taps in order (integer sums: the order changes nothing; float
  // sums: the reference's order).
  int64_t col0 = std::numeric_limits<int64_t>::max(), col1 = 0;
  for (int64_t x = x0; x < x0 + cols; ++x) {
    col0 = std::min(col0, tx.first[x]);
    col1 = std::max(col1, tx.first[x] + tx.size[x]);
  }
  const int64_t line = rows * ch_n;  // one source column of the rectangle, all channels
  std::vector<pix_t> columns(std::max<int64_t>(col1 - col0, 0) * line);
  for (int64_t r = 0; r < rows; ++r) {
    const pix_t* s = src + ((row0 + r) * src_w + col0) * ch_n;
    for (int64_t c = 0; c < col1 - col0; ++c)
      for (int64_t ch = 0; ch < ch_n; ++ch) columns[c * line + r * ch_n + ch] = s[c * ch_n + ch];
  }
  std::vector<mid_t> tmp(rows * cols * ch_n);  // (rows, cols, C)
  {
    const acc_t start_x = start_of<pix_t>(tx.precision);
    std::vector<acc_t> acc_buf(line);
    acc_t* __restrict acc = acc_buf.data();
    for (int64_t x = 0; x < cols; ++x) {
      std::fill(acc, acc + line, start_x);
      const auto* w = weights_of<pix_t>(tx) + (x0 + x) * tx.width;
      for (int64_t k = 0; k < tx.size[x0 + x]; ++k) {
        const pix_t* __restrict c = columns.data() + (tx.first[x0 + x] + k - col0) * line;
        const acc_t wk = static_cast<acc_t>(w[k]);
        for (int64_t j = 0; j < line; ++j) acc[j] += static_cast<acc_t>(c[j]) * wk;
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t ch = 0; ch < ch_n; ++ch)
          tmp[(r * cols + x) * ch_n + ch] = finish<pix_t, mid_t>(acc[r * ch_n + ch], tx.precision);
    }
  }
  const acc_t start_y = start_of<pix_t>(ty.precision);
  const int64_t row_len = cols * ch_n;
  std::vector<acc_t> acc_buf(row_len);
  acc_t* __restrict acc = acc_buf.data();
  for (int64_t y = 0; y < out_rows; ++y) {
    std::fill(acc, acc + row_len, start_y);
    const auto* w = weights_of<pix_t>(ty) + (y0 + y) * ty.width;
    for (int64_t k = 0; k < ty.size[y0 + y]; ++k) {  // contiguous rows of tmp: vectorises
      const mid_t* __restrict t = tmp.data() + (ty.first[y0 + y] + k - row0) * row_len;
      const acc_t wk = static_cast<acc_t>(w[k]);
      for (int64_t j = 0; j < row_len; ++j) acc[j] += static_cast<acc_t>(t[j]) * wk;
    }
    for (int64_t ch = 0; ch < ch_n; ++ch) {
      pix_t* __restrict dst = out + (ch * out_rows + y) * cols;
      for (int64_t x = 0; x < cols; ++x) dst[x] = finish<pix_t, pix_t>(acc[x * ch_n + ch], ty.precision);
    }
  }
}

template <typename pix_t>
void resize_regions_typed(const at::Tensor& src, at::Tensor& out, double top, double left,
                          double height, double width, int64_t out_h, int64_t out_w,
                          at::IntArrayRef regions) {
  const int64_t H = src.size(0), W = src.size(1), C = src.size(2);
  const int64_t n = static_cast<int64_t>(regions.size()) / 4;
  const int64_t rows = regions[2], cols = regions[3];
  // The taps of both axes once for all regions (each needs the whole axis's precision).
  constexpr int bits = Pixel<pix_t>::kWeightBits;
  int max_precision = 0;
  if constexpr (bits > 0) max_precision = Pixel<pix_t>::kMaxPrecision;
  const AxisTaps tx = axis_taps(W, left, width, out_w, bits, max_precision);
  const AxisTaps ty = axis_taps(H, top, height, out_h, bits, max_precision);
  const pix_t* s = src.const_data_ptr<pix_t>();
  pix_t* o = out.data_ptr<pix_t>();
  for (int64_t i = 0; i < n; ++i) {
    pix_t* dst = o + i * C * rows * cols;
    if (C == 3) {
      resample<3>(s, W, C, tx, ty, regions[4 * i], regions[4 * i + 1], rows, cols, dst);
    } else {
      resample<0>(s, W, C, tx, ty, regions[4 * i], regions[4 * i + 1], rows, cols, dst);
    }
  }
}

}  // namespace

at::Tensor resize_region_cpu(const at::Tensor& image, at::ArrayRef<double> box,
                             at::IntArrayRef size, at::IntArrayRef regions) {
  const char* op = "resize_region";
  const auto dtype = image.scalar_type();
  TORCH_CHECK(image.dim() == 3 && (dtype == at::kByte || dtype == at::kUInt16 ||
                                   dtype == at::kFloat),
              op, ": image must be a uint8, uint16 or float32 (H, W, C) tensor, got ", dtype,
              " of shape ", image.sizes());
  TORCH_CHECK(image.device().is_cpu(), op, ": image must be on the CPU, got ", image.device());
  TORCH_CHECK(box.size() == 4 && size.size() == 2 && !regions.empty() && regions.size() % 4 == 0,
              op, ": box must be [top, left, height, width], size [out_h, out_w] and regions "
              "[y0, x0, rows, cols] per region, got ", box.size(), ", ", size.size(), " and ",
              regions.size(), " values");
  const int64_t H = image.size(0), W = image.size(1), C = image.size(2);
  const double top = box[0], left = box[1], height = box[2], width = box[3];
  TORCH_CHECK(H > 0 && W > 0 && C > 0, op, ": image is empty, shape ", image.sizes());
  TORCH_CHECK(top >= 0 && left >= 0 && height > 0 && width > 0 && top + height <= H + 1e-6 &&
                  left + width <= W + 1e-6,
              op, ": box (top, left, height, width) = (", top, ", ", left, ", ", height, ", ",
              width, ") must lie inside the ", H, "x", W, " image and not be empty");
  const int64_t out_h = size[0], out_w = size[1];
  TORCH_CHECK(out_h > 0 && out_w > 0, op, ": size must be positive, got (", out_h, ", ", out_w,
              ")");
  const int64_t n = static_cast<int64_t>(regions.size()) / 4;
  const int64_t rows = regions[2], cols = regions[3];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y0 = regions[4 * i], x0 = regions[4 * i + 1];
    TORCH_CHECK(regions[4 * i + 2] == rows && regions[4 * i + 3] == cols, op,
                ": every region must have the first one's size (", rows, ", ", cols, "), region ",
                i, " has (", regions[4 * i + 2], ", ", regions[4 * i + 3], ")");
    TORCH_CHECK(y0 >= 0 && x0 >= 0 && rows > 0 && cols > 0 && y0 + rows <= out_h &&
                    x0 + cols <= out_w,
                op, ": region (y0, x0, rows, cols) = (", y0, ", ", x0, ", ", rows, ", ", cols,
                ") must lie inside the ", out_h, "x", out_w, " output");
  }
  const auto src = image.contiguous();
  auto out = at::empty({n, C, rows, cols}, image.options());
  if (dtype == at::kByte) {
    resize_regions_typed<uint8_t>(src, out, top, left, height, width, out_h, out_w, regions);
  } else if (dtype == at::kUInt16) {
    resize_regions_typed<uint16_t>(src, out, top, left, height, width, out_h, out_w, regions);
  } else {
    resize_regions_typed<float>(src, out, top, left, height, width, out_h, out_w, regions);
  }
  return out;
}

}  // namespace lomar_ops
