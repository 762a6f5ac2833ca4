// Compact binary encoding of index values: varints and length-prefixed
// strings, little room per item (the index stays small next to the mail).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace wxa::index {

inline void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

inline void PutBytes(std::string* out, std::string_view s) {
  PutVarint(out, s.size());
  out->append(s);
}

inline void PutU32BE(std::string* out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out->push_back(static_cast<char>((v >> s) & 0xFF));
}

inline uint32_t GetU32BE(std::string_view s) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}

// Reads values written by the Put* functions; ok() turns false (and stays
// false) on truncated or malformed input instead of reading past the end.
class Decoder {
 public:
  explicit Decoder(std::string_view s) : s_(s) {}
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (s_.empty()) {
        ok_ = false;
        return 0;
      }
      auto b = static_cast<unsigned char>(s_.front());
      s_.remove_prefix(1);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    ok_ = false;
    return 0;
  }
  std::string_view Bytes() {
    uint64_t n = Varint();
    if (!ok_ || n > s_.size()) {
      ok_ = false;
      return {};
    }
    std::string_view r = s_.substr(0, n);
    s_.remove_prefix(n);
    return r;
  }
  std::string_view Fixed(size_t n) {
    if (n > s_.size()) {
      ok_ = false;
      return {};
    }
    std::string_view r = s_.substr(0, n);
    s_.remove_prefix(n);
    return r;
  }
  bool ok() const { return ok_; }
  bool done() const { return s_.empty(); }

 private:
  std::string_view s_;
  bool ok_ = true;
};

}  // namespace wxa::index
