// The Microsoft Graph target: `graph:` (issue #11).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "engine/sinks/sink.h"

namespace wxa::sinks {

struct GraphOptions {
  std::string folder = "WeChat Archiver";  // levels separated by '/'
  std::string tenant;                      // --graph-tenant
  std::string client_id;                   // --graph-client-id
  std::string client_secret;               // from --graph-secret-file
  std::string certificate_file;            // --graph-certificate (PEM: key + certificate)
  std::string login_url = "https://login.microsoftonline.com";  // --graph-login-url
  std::string graph_url = "https://graph.microsoft.com";        // --graph-url
  enum class Mode : uint8_t { kImportMime, kExtProps };
  Mode mode = Mode::kImportMime;           // --graph-mode importmime|extprops
  std::string ca_file;                     // --ca-file
  bool tls_insecure = false;               // --tls-insecure (tests only)
  size_t connections = 16;                 // --connections: requests in flight in total
};

Result<std::unique_ptr<Sink>> MakeGraphSink(const Target& target, GraphOptions options);

}  // namespace wxa::sinks
