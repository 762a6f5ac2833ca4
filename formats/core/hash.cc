#include "formats/core/hash.h"

#include <type_traits>

#include <openssl/evp.h>

namespace wxa::core {

namespace {

// OpenSSL 3 looks an algorithm up in its provider tables on every EVP_DigestInit_ex with
// EVP_sha256(), and EVP_Digest allocates a context per call: together about 1 us per hash,
// which is a third of hashing a 3 KB message with SHA-NI. Fetch each algorithm once and keep
// one context per thread.
// Fetched once, kept for the process's lifetime; if a fetch fails, the implicit one.
const EVP_MD* Sha256Md() {
  static const EVP_MD* md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  return md != nullptr ? md : EVP_sha256();
}
const EVP_MD* Md5Md() {
  static const EVP_MD* md = EVP_MD_fetch(nullptr, "MD5", nullptr);
  return md != nullptr ? md : EVP_md5();
}

struct ThreadCtx {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~ThreadCtx() { EVP_MD_CTX_free(ctx); }
};

template <typename Digest>
Digest OneShot(const EVP_MD* md, std::string_view data) {
  thread_local ThreadCtx t;
  Digest out{};
  unsigned int n = 0;
  if (t.ctx == nullptr || EVP_DigestInit_ex2(t.ctx, md, nullptr) != 1 ||
      EVP_DigestUpdate(t.ctx, data.data(), data.size()) != 1 || EVP_DigestFinal_ex(t.ctx, out.data(), &n) != 1) {
    EVP_Digest(data.data(), data.size(), out.data(), &n, md, nullptr);
  }
  return out;
}

}  // namespace

Sha256Digest Sha256(std::string_view data) { return OneShot<Sha256Digest>(Sha256Md(), data); }

Md5Digest Md5(std::string_view data) { return OneShot<Md5Digest>(Md5Md(), data); }

std::string ToHex(const unsigned char* data, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s(n * 2, '\0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = kDigits[data[i] >> 4];
    s[2 * i + 1] = kDigits[data[i] & 0xF];
  }
  return s;
}

template <typename DigestT>
static const EVP_MD* MdFor() {
  if constexpr (std::is_same_v<DigestT, Sha256Digest>) {
    return Sha256Md();
  } else {
    return Md5Md();
  }
}

template <typename DigestT>
HashStream<DigestT>::HashStream() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex2(static_cast<EVP_MD_CTX*>(ctx_), MdFor<DigestT>(), nullptr);
}
template <typename DigestT>
HashStream<DigestT>::~HashStream() {
  EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_));
}
template <typename DigestT>
void HashStream<DigestT>::Update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}
template <typename DigestT>
DigestT HashStream<DigestT>::Finish() {
  DigestT out{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &n);
  return out;
}
template class HashStream<Sha256Digest>;
template class HashStream<Md5Digest>;

}  // namespace wxa::core
