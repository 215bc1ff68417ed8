// SHA-256 (FIPS 180-4), incremental: the digest a model upload declares in its header.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace assay::detail {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t n);
  // Lower-case hex digest of everything given to update; call once.
  std::string hex_digest();

 private:
  void block(const unsigned char* p);
  std::array<std::uint32_t, 8> h_;
  unsigned char buf_[64];
  std::size_t buffered_ = 0;
  std::uint64_t total_ = 0;
};

}  // namespace assay::detail
