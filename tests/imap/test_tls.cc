#include "tests/imap/test_tls.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

namespace wxa::test {

namespace {

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Free>;
using X509Ptr = std::unique_ptr<X509, Free>;
using BioPtr = std::unique_ptr<BIO, Free>;
using ExtPtr = std::unique_ptr<X509_EXTENSION, Free>;

Status OpenSslError(const std::string& what) {
  std::string msg = what;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    msg += ": ";
    msg += buf;
  }
  return Status::IOError(msg);
}

Result<PkeyPtr> NewKey() {
  PkeyPtr k(EVP_EC_gen("P-256"));
  if (!k) return OpenSslError("EC key generation");
  return k;
}

Status AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  ExtPtr ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return OpenSslError("certificate extension " + std::string(OBJ_nid2sn(nid)) + "=" + value);
  }
  return Status::Ok();
}

Result<X509Ptr> NewCert(const std::string& cn, EVP_PKEY* key, int valid_days) {
  X509Ptr cert(X509_new());
  if (!cert) return OpenSslError("X509_new");
  X509_set_version(cert.get(), 2);  // v3
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof serial) != 1) return OpenSslError("RAND_bytes");
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400L * valid_days);
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("wxarchiver tests"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  return cert;
}

Result<std::string> Pem(X509* cert, EVP_PKEY* key) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  int ok = cert != nullptr ? PEM_write_bio_X509(bio.get(), cert)
                           : PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr,
                                                      nullptr);
  if (ok != 1) return OpenSslError("PEM write");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

}  // namespace

Result<TestPki> MakeTestPki(const std::vector<std::string>& dns_names,
                            const std::vector<std::string>& ip_addresses, int valid_days) {
  WXA_ASSIGN_OR_RETURN(PkeyPtr ca_key, NewKey());
  WXA_ASSIGN_OR_RETURN(X509Ptr ca, NewCert("wxarchiver test CA", ca_key.get(), valid_days));
  X509_set_issuer_name(ca.get(), X509_get_subject_name(ca.get()));
  WXA_RETURN_IF_ERROR(AddExt(ca.get(), ca.get(), NID_basic_constraints, "critical,CA:TRUE"));
  WXA_RETURN_IF_ERROR(AddExt(ca.get(), ca.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  WXA_RETURN_IF_ERROR(AddExt(ca.get(), ca.get(), NID_subject_key_identifier, "hash"));
  if (X509_sign(ca.get(), ca_key.get(), EVP_sha256()) == 0) return OpenSslError("signing the CA");

  WXA_ASSIGN_OR_RETURN(PkeyPtr key, NewKey());
  std::string cn = dns_names.empty() ? (ip_addresses.empty() ? "localhost" : ip_addresses[0])
                                     : dns_names[0];
  WXA_ASSIGN_OR_RETURN(X509Ptr cert, NewCert(cn, key.get(), valid_days));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get()));
  std::string san;
  for (const auto& d : dns_names) san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  for (const auto& ip : ip_addresses) san += (san.empty() ? "" : ",") + std::string("IP:") + ip;
  WXA_RETURN_IF_ERROR(AddExt(cert.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE"));
  WXA_RETURN_IF_ERROR(
      AddExt(cert.get(), ca.get(), NID_key_usage, "critical,digitalSignature,keyEncipherment"));
  WXA_RETURN_IF_ERROR(AddExt(cert.get(), ca.get(), NID_ext_key_usage, "serverAuth"));
  WXA_RETURN_IF_ERROR(AddExt(cert.get(), ca.get(), NID_subject_key_identifier, "hash"));
  WXA_RETURN_IF_ERROR(AddExt(cert.get(), ca.get(), NID_authority_key_identifier, "keyid:always"));
  if (!san.empty()) WXA_RETURN_IF_ERROR(AddExt(cert.get(), ca.get(), NID_subject_alt_name, san));
  if (X509_sign(cert.get(), ca_key.get(), EVP_sha256()) == 0) {
    return OpenSslError("signing the server certificate");
  }

  TestPki pki;
  WXA_ASSIGN_OR_RETURN(pki.ca_cert_pem, Pem(ca.get(), nullptr));
  WXA_ASSIGN_OR_RETURN(pki.ca_key_pem, Pem(nullptr, ca_key.get()));
  WXA_ASSIGN_OR_RETURN(pki.server_cert_pem, Pem(cert.get(), nullptr));
  WXA_ASSIGN_OR_RETURN(pki.server_key_pem, Pem(nullptr, key.get()));
  return pki;
}

}  // namespace wxa::test
