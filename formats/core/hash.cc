#include "formats/core/hash.h"

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

Sha256Stream::Sha256Stream() : ctx_(EVP_MD_CTX_new()) {
  EVP_DigestInit_ex2(static_cast<EVP_MD_CTX*>(ctx_), Sha256Md(), nullptr);
}
Sha256Stream::~Sha256Stream() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Sha256Stream::Update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}
Sha256Digest Sha256Stream::Finish() {
  Sha256Digest out{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &n);
  return out;
}

Md5Stream::Md5Stream() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex2(static_cast<EVP_MD_CTX*>(ctx_), Md5Md(), nullptr); }
Md5Stream::~Md5Stream() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }
void Md5Stream::Update(std::string_view data) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data.data(), data.size());
}
Md5Digest Md5Stream::Finish() {
  Md5Digest out{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &n);
  return out;
}

}  // namespace wxa::core
