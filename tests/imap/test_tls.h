// A throwaway PKI for test servers: a self-signed CA and a server
// certificate it signs, valid for the given DNS names and IP addresses.
// EC P-256 keys: generated in about a millisecond, accepted by every TLS
// stack we test with (OpenSSL 3 in Dovecot, curl, our client).
#pragma once

#include <string>
#include <vector>

#include "formats/core/status.h"

namespace wxa::test {

struct TestPki {
  std::string ca_cert_pem;
  std::string ca_key_pem;
  std::string server_cert_pem;
  std::string server_key_pem;
};

// Valid from one hour ago (clock skew) for `valid_days`.
Result<TestPki> MakeTestPki(const std::vector<std::string>& dns_names,
                            const std::vector<std::string>& ip_addresses, int valid_days = 30);

}  // namespace wxa::test
