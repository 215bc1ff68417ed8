// Tensor views and their wire encoding (little-endian, row-major, no padding).
#include <algorithm>
#include <bit>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "assay/client.h"
#include "assay/v1/tensor.pb.h"

namespace assay {

std::size_t itemsize(DType t) {
  switch (t) {
    case DType::FP16:
    case DType::BF16:
      return 2;
    case DType::FP32:
    case DType::INT32:
      return 4;
    case DType::FP64:
    case DType::INT64:
      return 8;
  }
  throw std::invalid_argument("unknown dtype");
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::FP32: return "FP32";
    case DType::FP16: return "FP16";
    case DType::FP64: return "FP64";
    case DType::INT32: return "INT32";
    case DType::INT64: return "INT64";
    case DType::BF16: return "BF16";
  }
  return "UNKNOWN";
}

std::uint16_t float_to_bf16_bits(float v) {
  std::uint32_t x = std::bit_cast<std::uint32_t>(v);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);  // round to nearest even
  return static_cast<std::uint16_t>(x >> 16);
}

std::uint16_t float_to_half_bits(float v) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(v);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;                    // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;                   // overflow -> inf
  if (abs < 0x38800000u) {                                         // subnormal or zero
    // value = abs_float; half subnormal unit is 2^-24.
    const float f = std::bit_cast<float>(abs) * 16777216.0f;      // scale by 2^24
    const float r = std::nearbyint(f);                             // ties to even (default mode)
    return sign | static_cast<std::uint16_t>(r);
  }
  std::uint32_t m = abs + 0xc8000000u;  // rebias exponent: (e - 127 + 15) << 23
  m += 0x0fffu + ((m >> 13) & 1u);      // round to nearest even on the 13 dropped bits
  return sign | static_cast<std::uint16_t>(m >> 13);
}

float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  const std::uint32_t man = h & 0x3ffu;
  if (exp == 0) {
    const float f = static_cast<float>(man) / 16777216.0f;
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (man << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
}

TensorView::TensorView(DType dtype, const void* data, std::size_t count,
                       std::vector<std::int64_t> shape)
    : dtype_(dtype),
      data_(static_cast<const std::byte*>(data)),
      bytes_(count * itemsize(dtype)),
      shape_(std::move(shape)) {
  std::int64_t n = 1;
  for (auto d : shape_) {
    if (d < 0) throw std::invalid_argument("tensor shape has a negative dimension");
    n *= d;
  }
  if (static_cast<std::size_t>(n) != count) {
    throw std::invalid_argument("tensor shape holds " + std::to_string(n) +
                                " elements but the buffer has " + std::to_string(count));
  }
}

TensorView TensorView::f32(std::span<const float> v, std::vector<std::int64_t> shape) {
  return TensorView(DType::FP32, v.data(), v.size(), std::move(shape));
}
TensorView TensorView::f64(std::span<const double> v, std::vector<std::int64_t> shape) {
  return TensorView(DType::FP64, v.data(), v.size(), std::move(shape));
}
TensorView TensorView::i32(std::span<const std::int32_t> v, std::vector<std::int64_t> shape) {
  return TensorView(DType::INT32, v.data(), v.size(), std::move(shape));
}
TensorView TensorView::i64(std::span<const std::int64_t> v, std::vector<std::int64_t> shape) {
  return TensorView(DType::INT64, v.data(), v.size(), std::move(shape));
}
TensorView TensorView::f16_bits(std::span<const std::uint16_t> v,
                                std::vector<std::int64_t> shape) {
  return TensorView(DType::FP16, v.data(), v.size(), std::move(shape));
}
TensorView TensorView::bf16_bits(std::span<const std::uint16_t> v,
                                 std::vector<std::int64_t> shape) {
  return TensorView(DType::BF16, v.data(), v.size(), std::move(shape));
}

void TensorView::append_le_bytes(std::size_t offset, std::size_t n, std::string* out) const {
  if (offset > bytes_ || n > bytes_ - offset) throw std::out_of_range("tensor byte range");
  const char* src = reinterpret_cast<const char*>(data_) + offset;
  if constexpr (std::endian::native == std::endian::little) {
    out->append(src, n);
  } else {
    // Chunks are cut on element boundaries by the callers (chunk sizes are rounded).
    const std::size_t w = itemsize(dtype_);
    const std::size_t start = out->size();
    out->append(src, n);
    for (std::size_t i = start; i + w <= out->size(); i += w) {
      std::reverse(out->begin() + static_cast<std::ptrdiff_t>(i),
                   out->begin() + static_cast<std::ptrdiff_t>(i + w));
    }
  }
}

void TensorView::to_proto(v1::Tensor* out) const {
  out->set_dtype(static_cast<v1::DataType>(dtype_));
  out->clear_shape();
  for (auto d : shape_) out->add_shape(d);
  std::string* data = out->mutable_data();
  data->clear();
  data->reserve(bytes_);
  append_le_bytes(0, bytes_, data);
}

}  // namespace assay
