// Offline checks of the tensor encoding: byte order, 16-bit conversions, shape checks.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "assay/client.h"
#include "assay/v1/tensor.pb.h"

static int failures = 0, passes = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (cond) {                                                        \
      ++passes;                                                        \
    } else {                                                           \
      ++failures;                                                      \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
    }                                                                  \
  } while (0)

int main() {
  // float32 1.0 is 00 00 80 3f little-endian; shape stays outermost first.
  std::vector<float> v{1.0f, -2.5f, 0.0f, 3.0f, 4.0f, 5.0f};
  assay::v1::Tensor t;
  assay::TensorView::f32(v, {2, 3}).to_proto(&t);
  CHECK(t.dtype() == assay::v1::DATA_TYPE_FP32);
  CHECK(t.shape_size() == 2 && t.shape(0) == 2 && t.shape(1) == 3);
  CHECK(t.data().size() == 24);
  const unsigned char one[4] = {0x00, 0x00, 0x80, 0x3f};
  CHECK(std::memcmp(t.data().data(), one, 4) == 0);

  std::vector<std::int64_t> i{1, -1};
  assay::TensorView::i64(i, {2}).to_proto(&t);
  CHECK(t.dtype() == assay::v1::DATA_TYPE_INT64 && t.data().size() == 16);
  CHECK(static_cast<unsigned char>(t.data()[0]) == 1 && t.data()[7] == 0);
  CHECK(static_cast<unsigned char>(t.data()[8]) == 0xff);

  // binary16 and bfloat16 conversions, including rounding and specials.
  CHECK(assay::float_to_half_bits(1.0f) == 0x3c00);
  CHECK(assay::float_to_half_bits(-2.0f) == 0xc000);
  CHECK(assay::float_to_half_bits(65504.0f) == 0x7bff);
  CHECK(assay::float_to_half_bits(65520.0f) == 0x7c00);       // rounds to +inf
  CHECK(assay::float_to_half_bits(5.960464477539063e-08f) == 0x0001);  // smallest subnormal
  CHECK(assay::float_to_half_bits(0.0f) == 0x0000);
  CHECK((assay::float_to_half_bits(NAN) & 0x7c00) == 0x7c00);
  CHECK(assay::float_to_half_bits(1.0f + 1.0f / 2048) == 0x3c00);  // tie -> even
  CHECK(assay::float_to_half_bits(1.0f + 3.0f / 2048) == 0x3c02);  // tie -> even (up)
  CHECK(assay::half_bits_to_float(0x3555) == 0.333251953125f);
  CHECK(assay::float_to_bf16_bits(1.0f) == 0x3f80);
  CHECK(assay::float_to_bf16_bits(-3.0f) == 0xc040);
  for (std::uint32_t h = 0; h < 0x7c00; ++h) {  // every finite positive half round-trips
    if (assay::float_to_half_bits(assay::half_bits_to_float(static_cast<std::uint16_t>(h))) != h) {
      std::fprintf(stderr, "half round trip failed at 0x%04x\n", h);
      ++failures;
      break;
    }
  }

  // A buffer that does not match its shape is rejected before any call.
  bool threw = false;
  try {
    assay::TensorView::f32(v, {4, 2});
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw);

  std::printf("tensor: %d passed, %d failed\n", passes, failures);
  return failures ? 1 : 0;
}
