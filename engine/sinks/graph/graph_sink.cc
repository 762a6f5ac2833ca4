#include "engine/sinks/graph/graph_sink.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <simdjson.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "formats/core/file.h"
#include "formats/core/json_writer.h"
#include "formats/pst/pst_writer.h"

namespace wxa::sinks {

namespace graph {

std::string ODataQuote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  out += '\'';
  return out;
}

std::string PercentEncode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (unsigned char c : s) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
        c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

namespace {
struct UrlParts {
  std::string scheme, host;
};
std::optional<UrlParts> SplitUrl(std::string_view url) {
  size_t p = url.find("://");
  if (p == std::string_view::npos || p == 0) return std::nullopt;
  UrlParts u;
  u.scheme = std::string(url.substr(0, p));
  for (auto& c : u.scheme) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string_view rest = url.substr(p + 3);
  size_t end = rest.find_first_of("/?#");
  std::string_view hostport = rest.substr(0, end);
  if (size_t at = hostport.rfind('@'); at != std::string_view::npos) return std::nullopt;  // no userinfo
  if (!hostport.empty() && hostport[0] == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    u.host = std::string(hostport.substr(1, close - 1));
  } else {
    u.host = std::string(hostport.substr(0, hostport.find(':')));
  }
  for (auto& c : u.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (u.host.empty()) return std::nullopt;
  return u;
}
bool IsLoopbackHost(const std::string& h) {
  return h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0;
}
}  // namespace

Status CheckEndpointUrl(std::string_view what, std::string_view url) {
  auto u = SplitUrl(url);
  if (!u) return Status::InvalidArgument(fmt::format("{} '{}' is not an http(s) URL", what, url));
  if (u->scheme == "https") return Status::Ok();
  if (u->scheme == "http") {
    if (IsLoopbackHost(u->host)) return Status::Ok();
    return Status::InvalidArgument(
        fmt::format("{} '{}': plain http is accepted only for a loopback host (tokens and secrets would go in the clear)",
                    what, url));
  }
  return Status::InvalidArgument(fmt::format("{} '{}' is not an http(s) URL", what, url));
}

void AppendBase64(std::string_view bytes, std::string* out) {
  const size_t start = out->size();
  out->resize(start + Base64Size(bytes.size()));
  // EVP_EncodeBlock takes an int length: encode in large whole-triplet pieces.
  constexpr size_t kPiece = 3u << 20;
  size_t in = 0, o = start;
  while (in < bytes.size()) {
    size_t n = std::min(kPiece, bytes.size() - in);
    int w = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out->data() + o),
                            reinterpret_cast<const unsigned char*>(bytes.data() + in), static_cast<int>(n));
    in += n;
    o += static_cast<size_t>(w);
  }
  out->resize(o);
}

std::string Base64(std::string_view bytes) {
  std::string out;
  AppendBase64(bytes, &out);
  return out;
}

namespace {

std::string IsoTime(int64_t ms) {
  const time_t t = static_cast<time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec);
}

// fileAttachment JSON for an attachment sent with its bytes (create or POST).
void WriteFileAttachment(core::JsonWriter& w, std::string* out, const pst::Attachment& a) {
  w.BeginObject().Field("@odata.type", "#microsoft.graph.fileAttachment");
  w.Field("name", a.filename.empty() ? std::string_view("attachment") : std::string_view(a.filename));
  w.Field("contentType", a.mime_type.empty() ? std::string_view("application/octet-stream") : std::string_view(a.mime_type));
  if (!a.content_id.empty()) w.Field("contentId", a.content_id);
  // contentBytes: base64 needs no JSON escaping; written straight into the body.
  w.Key("contentBytes").Raw("\"");
  AppendBase64(a.data, out);
  out->push_back('"');
  w.EndObject();
}

// An upper bound of WriteFileAttachment's size.
uint64_t FileAttachmentJsonBound(const pst::Attachment& a) {
  return Base64Size(a.data.size()) + 6 * (a.filename.size() + a.mime_type.size() + a.content_id.size()) + 160;
}

}  // namespace

std::string_view PartsProperty() {
  // A named property in a GUID of our own: one name per mailbox.
  return "String {7C1D2E4A-5B3F-4E8A-9D61-0F2B3C4D5E6F} Name wxarchiverAttachmentCount";
}

namespace {
void WriteAddress(core::JsonWriter& w, std::string_view key, std::string_view name, std::string_view address) {
  w.Key(key).BeginObject().Key("emailAddress").BeginObject();
  if (!name.empty()) w.Field("name", name);
  w.Field("address", address).EndObject().EndObject();
}
}  // namespace

Result<ExtPropsPlan> PlanExtProps(const pst::Message& m, const GraphOptions& o) {
  ExtPropsPlan plan;
  // Request bodies stay this far under the cap (headers, rounding).
  const uint64_t cap = o.max_request_bytes > 8192 ? o.max_request_bytes - 4096 : o.max_request_bytes;
  const uint64_t most = std::min<uint64_t>(cap, o.upload_budget_bytes);
  // The text part of the create, measured by writing it once without attachments.
  auto write_head = [&](std::string* out, bool marker) {
    core::JsonWriter w(out);
    w.BeginObject();
    w.Field("subject", m.subject);
    w.Key("body").BeginObject();
    if (!m.body_html.empty()) {
      w.Field("contentType", "html").Field("content", m.body_html);
    } else {
      w.Field("contentType", "text").Field("content", m.body_plain);
    }
    w.EndObject();
    if (!m.sender_address.empty()) {
      WriteAddress(w, "from", m.sender_name, m.sender_address);
      WriteAddress(w, "sender", m.sender_name, m.sender_address);
    }
    for (int type = 1; type <= 3; ++type) {
      bool any = false;
      for (const auto& r : m.recipients) any |= r.type == type && !r.address.empty();
      if (!any) continue;
      w.Key(type == 1 ? "toRecipients" : type == 2 ? "ccRecipients" : "bccRecipients").BeginArray();
      for (const auto& r : m.recipients) {
        if (r.type != type || r.address.empty()) continue;
        w.BeginObject().Key("emailAddress").BeginObject();
        if (!r.name.empty() && r.name != r.address) w.Field("name", r.name);
        w.Field("address", r.address).EndObject().EndObject();
      }
      w.EndArray();
    }
    if (!m.internet_message_id.empty()) w.Field("internetMessageId", m.internet_message_id);
    w.Field("isRead", m.read);
    // Received mail, not a draft: the flags are settable only at creation
    // (MS-OXCMSG 2.2.1.6); receivedDateTime/sentDateTime are read-only.
    w.Key("singleValueExtendedProperties").BeginArray();
    auto prop = [&](std::string_view id, std::string_view value) {
      w.BeginObject().Field("id", id).Field("value", value).EndObject();
    };
    prop("Integer 0x0E07", m.read ? "1" : "0");
    const int64_t received = m.received_time_ms != 0 ? m.received_time_ms : m.sent_time_ms;
    const int64_t sent = m.sent_time_ms != 0 ? m.sent_time_ms : m.received_time_ms;
    if (received != 0) prop("SystemTime 0x0E06", IsoTime(received));
    if (sent != 0) prop("SystemTime 0x0039", IsoTime(sent));
    if (!m.transport_headers.empty()) prop("String 0x007D", m.transport_headers);
    if (!m.in_reply_to.empty()) prop("String 0x1042", m.in_reply_to);
    if (!m.references.empty()) prop("String 0x1039", m.references);
    if (marker) prop(PartsProperty(), std::to_string(m.attachments.size()));
    w.EndArray();
    return w;
  };
  std::string head;
  write_head(&head, true);
  uint64_t used = head.size() + 32;
  std::vector<uint32_t> inline_ones;
  for (uint32_t i = 0; i < m.attachments.size(); ++i) {
    const auto& a = m.attachments[i];
    const uint64_t json = FileAttachmentJsonBound(a);
    if (a.data.size() < o.min_upload_session_bytes && used + json <= most) {
      inline_ones.push_back(i);
      used += json;
      continue;
    }
    if (json + 512 <= most && a.data.size() < o.min_upload_session_bytes) {
      plan.later.push_back(i);
      plan.session.push_back(false);
    } else if (a.data.size() >= o.min_upload_session_bytes) {
      plan.later.push_back(i);
      plan.session.push_back(true);
    } else {
      return Status::TooLarge(fmt::format(
          "attachment '{}' is {} bytes: in base64 over Graph's {}-byte request cap, yet under the {}-byte minimum of "
          "an upload session",
          a.filename, a.data.size(), o.max_request_bytes, o.min_upload_session_bytes));
    }
  }
  std::string& out = plan.create_body;
  out.reserve(used + 64);
  core::JsonWriter w = write_head(&out, !plan.later.empty());
  if (!inline_ones.empty()) {
    w.Key("attachments").BeginArray();
    for (uint32_t i : inline_ones) WriteFileAttachment(w, &out, m.attachments[i]);
    w.EndArray();
  }
  w.EndObject();
  if (out.size() > most) {
    return Status::TooLarge(fmt::format("the message's text is {} bytes of JSON: over Graph's {}-byte request cap{}",
                                        out.size(), o.max_request_bytes,
                                        most < cap ? " (or the upload budget)" : ""));
  }
  return plan;
}

Result<std::pair<uint64_t, std::chrono::milliseconds>> ParseBudget(std::string_view text) {
  const std::string t(text);
  const size_t slash = t.find('/');
  char* end = nullptr;
  const unsigned long long n = slash == std::string::npos ? 0 : std::strtoull(t.c_str(), &end, 10);
  if (slash == std::string::npos || end != t.c_str() + slash || n == 0) {
    return Status::InvalidArgument(fmt::format("'{}': expected N/SECONDS, e.g. 10000/600", text));
  }
  const double secs = std::strtod(t.c_str() + slash + 1, &end);
  if (end == t.c_str() + slash + 1 || *end != '\0' || !(secs > 0) || secs > 86400) {
    return Status::InvalidArgument(fmt::format("'{}': expected N/SECONDS, e.g. 10000/600", text));
  }
  return std::make_pair(static_cast<uint64_t>(n), std::chrono::milliseconds(static_cast<int64_t>(secs * 1000)));
}

}  // namespace graph

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

bool Tracing() {
  static const bool on = [] {
    const char* v = std::getenv("WXA_GRAPH_TRACE");
    return v != nullptr && *v != '\0' && *v != '0';
  }();
  return on;
}

struct EasyDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
using EasyPtr = std::unique_ptr<CURL, EasyDeleter>;
struct SlistDeleter {
  void operator()(curl_slist* s) const { curl_slist_free_all(s); }
};
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;
struct MultiDeleter {
  void operator()(CURLM* m) const { curl_multi_cleanup(m); }
};
using MultiPtr = std::unique_ptr<CURLM, MultiDeleter>;

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct PkeyDeleter {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyDeleter>;
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct BioDeleter {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};

std::string Base64Url(std::string_view bytes) {
  std::string s = graph::Base64(bytes);
  while (!s.empty() && s.back() == '=') s.pop_back();
  for (auto& c : s) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return s;
}

// The client certificate (--graph-certificate): a PEM file with the private
// key and the certificate registered with the app.
struct ClientCert {
  PkeyPtr key;
  std::string x5t;       // base64url SHA-1 of the DER certificate
  std::string x5t_s256;  // base64url SHA-256
};

Result<ClientCert> LoadClientCert(const std::string& path) {
  // Read as every file the user names is (core::ReadUserFile: a directory or
  // a device is refused before any read, the size is bounded), then parsed
  // from memory.
  auto pem = core::ReadUserFile(nullptr, path, 1u << 20);
  if (!pem.ok()) return pem.status().WithContext("--graph-certificate");
  std::unique_ptr<BIO, BioDeleter> bio(BIO_new_mem_buf(pem->data(), static_cast<int>(pem->size())));
  if (!bio) return Status::IOError(fmt::format("--graph-certificate {}: out of memory", path));
  ClientCert c;
  c.key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!c.key || EVP_PKEY_base_id(c.key.get()) != EVP_PKEY_RSA) {
    return Status::InvalidArgument(fmt::format("--graph-certificate {}: no unencrypted RSA private key in it", path));
  }
  BIO_reset(bio.get());
  std::unique_ptr<X509, X509Deleter> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return Status::InvalidArgument(fmt::format("--graph-certificate {}: no certificate in it", path));
  unsigned char* der = nullptr;
  const int n = i2d_X509(cert.get(), &der);
  if (n <= 0) return Status::InvalidArgument(fmt::format("--graph-certificate {}: unreadable certificate", path));
  unsigned char sha1[SHA_DIGEST_LENGTH], sha256[SHA256_DIGEST_LENGTH];
  SHA1(der, static_cast<size_t>(n), sha1);
  SHA256(der, static_cast<size_t>(n), sha256);
  OPENSSL_free(der);
  c.x5t = Base64Url(std::string_view(reinterpret_cast<char*>(sha1), sizeof sha1));
  c.x5t_s256 = Base64Url(std::string_view(reinterpret_cast<char*>(sha256), sizeof sha256));
  return c;
}

// A JWT client assertion (certificate-credentials): RS256, valid 10 minutes.
Result<std::string> MakeAssertion(const ClientCert& c, const std::string& aud, const std::string& client_id) {
  std::string header, payload;
  {
    core::JsonWriter w(&header);
    w.BeginObject().Field("alg", "RS256").Field("typ", "JWT").Field("x5t", c.x5t).EndObject();
  }
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  unsigned char jti[16];
  RAND_bytes(jti, sizeof jti);
  {
    core::JsonWriter w(&payload);
    w.BeginObject()
        .Field("aud", aud)
        .Field("iss", client_id)
        .Field("sub", client_id)
        .Field("jti", Base64Url(std::string_view(reinterpret_cast<char*>(jti), sizeof jti)))
        .Field("nbf", now - 60)
        .Field("iat", now - 60)
        .Field("exp", now + 600)
        .EndObject();
  }
  std::string input = Base64Url(header) + "." + Base64Url(payload);
  std::unique_ptr<EVP_MD_CTX, MdCtxDeleter> ctx(EVP_MD_CTX_new());
  size_t len = 0;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, c.key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
    return Status::IOError("cannot sign the client assertion");
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1) {
    return Status::IOError("cannot sign the client assertion");
  }
  sig.resize(len);
  return input + "." + Base64Url(sig);
}

// What a Graph error body says: {"error":{"code":..,"message":..}}, or the
// identity platform's {"error":"invalid_client","error_description":..}.
struct ErrorInfo {
  std::string code;
  std::string message;
};

ErrorInfo ParseError(simdjson::dom::parser& p, const std::string& body) {
  ErrorInfo e;
  simdjson::dom::element doc;
  if (p.parse(body).get(doc)) return e;
  simdjson::dom::element err;
  if (doc["error"].get(err)) return e;
  std::string_view sv;
  if (err.is_string()) {
    if (!err.get(sv)) e.code = std::string(sv);
    if (!doc["error_description"].get(sv)) {
      e.message = std::string(sv.substr(0, sv.find_first_of("\r\n")));
    }
    return e;
  }
  if (!err["code"].get(sv)) e.code = std::string(sv);
  if (!err["message"].get(sv)) e.message = std::string(sv);
  return e;
}

enum class Purpose : uint8_t {
  kToken, kUser, kFolderList, kFolderCreate, kImport, kProbe, kInventory,
  // extprops: a delivery's steps, and a probe's second and third looks
  kCreate, kAttach, kSession, kChunk, kProbeParts, kDiscard
};
const char* PurposeName(Purpose p) {
  switch (p) {
    case Purpose::kToken: return "token";
    case Purpose::kUser: return "user lookup";
    case Purpose::kFolderList: return "folder lookup";
    case Purpose::kFolderCreate: return "folder creation";
    case Purpose::kImport: return "importMime";
    case Purpose::kProbe: return "probe";
    case Purpose::kInventory: return "inventory";
    case Purpose::kCreate: return "message create";
    case Purpose::kAttach: return "attachment";
    case Purpose::kSession: return "upload session";
    case Purpose::kChunk: return "upload";
    case Purpose::kProbeParts: return "probe (attachments)";
    case Purpose::kDiscard: return "removal of a partial item";
  }
  return "?";
}

struct Job {
  Purpose kind = Purpose::kImport;  // kImport, kProbe or kInventory
  Delivery d;
  DoneFn done;
  ProbeFn probe_done;
  InventoryFn inventory_done;
  uint32_t attempts = 0;  // internal retries (probes, inventory pages)
  uint32_t auth_retries = 0;
  std::vector<std::string> ids;  // inventory so far
  std::string next_url;          // inventory: the next page

  // extprops deliveries: the plan (built in Submit), then the steps' state.
  std::optional<Status> refused;  // the item cannot go at all (kItemBad)
  std::string step_body;          // the next request's body, when prepared
  std::vector<uint32_t> later;    // attachments after the create
  std::vector<bool> later_session;
  size_t part = 0;                // next entry of `later`
  std::string created_id;         // the item once created
  std::string upload_url;         // the open upload session
  uint64_t upload_offset = 0;
  uint32_t step_attempts = 0;     // retries of the current step
  uint32_t throttles = 0;         // 429/503 answers to its requests (bounded)
  std::optional<Completion> after_discard;  // reported once the partial item is removed
  // Probes: a found item that carries the parts marker.
  std::string candidate;
  uint64_t expected_parts = 0;
  uint64_t parts_seen = 0;  // attachments counted so far (the list may come in pages)
  bool discard = false;  // the candidate is partial: remove it, then look again
};

struct Request {
  Purpose purpose = Purpose::kToken;
  EasyPtr easy;
  SlistPtr headers;
  std::string method;
  std::string url;
  std::string body;
  std::string_view payload;  // what is sent: `body`, or a slice of an attachment
  std::string content_type;
  std::string content_range;  // upload chunks
  bool no_auth = false;       // pre-authenticated upload URLs take no token
  uint64_t chunk_end = 0;     // upload chunks: the offset after this one
  std::string response;
  std::optional<milliseconds> retry_after;
  std::string mailbox;  // "" for the token
  bool charged = false;  // holds a mailbox in-flight slot
  std::unique_ptr<Job> job;
  std::string token_used;
  size_t read_pos = 0;  // body bytes handed to curl
  char curl_error[CURL_ERROR_SIZE] = {0};
};

size_t ReadCb(char* p, size_t s, size_t n, void* ud) {
  auto* r = static_cast<Request*>(ud);
  const size_t k = std::min(s * n, r->payload.size() - r->read_pos);
  std::memcpy(p, r->payload.data() + r->read_pos, k);
  r->read_pos += k;
  return k;
}

// libcurl silently sends a request again when a reused connection dies
// before any answer ("Connection died, retrying a fresh connect"). For an
// importMime POST that is a duplicate in the making: the server may have
// stored it. Refusing the rewind turns it into an error (in doubt, probed).
int SeekCb(void* ud, curl_off_t offset, int origin) {
  auto* r = static_cast<Request*>(ud);
  if (offset == 0 && origin == SEEK_SET && r->read_pos == 0) return CURL_SEEKFUNC_OK;
  return CURL_SEEKFUNC_FAIL;
}

size_t WriteCb(char* p, size_t s, size_t n, void* ud) {
  static_cast<Request*>(ud)->response.append(p, s * n);
  return s * n;
}

size_t HeaderCb(char* p, size_t s, size_t n, void* ud) {
  auto* r = static_cast<Request*>(ud);
  std::string_view line(p, s * n);
  constexpr std::string_view kName = "retry-after:";
  if (line.size() > kName.size()) {
    bool match = true;
    for (size_t i = 0; i < kName.size(); ++i) {
      if (std::tolower(static_cast<unsigned char>(line[i])) != kName[i]) {
        match = false;
        break;
      }
    }
    if (match) {
      std::string v(line.substr(kName.size()));
      char* end = nullptr;
      double secs = std::strtod(v.c_str(), &end);
      if (end != v.c_str() && secs >= 0 && secs < 86400) {
        r->retry_after = milliseconds(static_cast<int64_t>(secs * 1000));
      }
    }
  }
  return s * n;
}

class GraphSink final : public Sink {
 public:
  GraphSink(Target t, GraphOptions o) : target_(std::move(t)), o_(std::move(o)), rng_(std::random_device{}()) {
    o_.connections = std::max<size_t>(1, o_.connections);
    o_.max_in_flight_per_mailbox = std::max(1, o_.max_in_flight_per_mailbox);
    o_.request_budget = std::max<uint64_t>(1, o_.request_budget);
    if (o_.window_margin.count() <= 0) {
      o_.window_margin = milliseconds(50) + std::max(o_.request_window, o_.upload_window) / 100;
    }
    {
      // Upload chunks: under the cap and the upload budget, in multiples of
      // 320 KiB where they can be (attachment-createuploadsession).
      const uint64_t cap = o_.max_request_bytes > 8192 ? o_.max_request_bytes - 4096 : o_.max_request_bytes;
      const uint64_t most = std::min(cap, o_.upload_budget_bytes);
      uint64_t c = std::max<uint64_t>(1, std::min(o_.upload_chunk_bytes, most));
      if (c >= 327680) c -= c % 327680;
      o_.upload_chunk_bytes = c;
    }
    while (!o_.graph_url.empty() && o_.graph_url.back() == '/') o_.graph_url.pop_back();
    while (!o_.login_url.empty() && o_.login_url.back() == '/') o_.login_url.pop_back();
    if (o_.scope.empty()) {
      auto u = graph::CheckEndpointUrl("", o_.graph_url);
      o_.scope = (o_.graph_url.rfind("https://", 0) == 0 && u.ok()) ? o_.graph_url + "/.default"
                                                                    : "https://graph.microsoft.com/.default";
    }
    size_t pos = 0;
    while (pos <= o_.folder.size()) {
      size_t slash = o_.folder.find('/', pos);
      std::string lv = o_.folder.substr(pos, slash == std::string::npos ? std::string::npos : slash - pos);
      if (!lv.empty()) levels_.push_back(lv);
      if (slash == std::string::npos) break;
      pos = slash + 1;
    }
  }

  ~GraphSink() override { Stop(); }

  const char* kind() const override { return "graph"; }
  Capabilities capabilities() const override {
    Capabilities c;
    c.remote = true;
    c.checks_mailboxes = o_.check_mailboxes;
    c.wants_pst_message = o_.mode == GraphOptions::Mode::kExtProps;
    return c;
  }

  Status Open() override {
    if (levels_.empty()) return Status::InvalidArgument(fmt::format("folder '{}' is not usable", o_.folder));
    WXA_RETURN_IF_ERROR(graph::CheckEndpointUrl("--graph-url", o_.graph_url));
    WXA_RETURN_IF_ERROR(graph::CheckEndpointUrl("--graph-login-url", o_.login_url));
    if (o_.tenant.empty() || o_.client_id.empty()) {
      return Status::InvalidArgument("a graph target needs --graph-tenant and --graph-client-id");
    }
    if (o_.client_secret.empty()) {
      if (o_.certificate_file.empty()) {
        return Status::InvalidArgument("a graph target needs --graph-secret-file or --graph-certificate");
      }
      auto cert = LoadClientCert(o_.certificate_file);
      if (!cert.ok()) return cert.status();
      cert_.emplace(std::move(*cert));
    }
    GlobalInit();
    multi_.reset(curl_multi_init());
    if (!multi_) return Status::IOError("curl_multi_init failed");
    curl_multi_setopt(multi_.get(), CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(multi_.get(), CURLMOPT_MAXCONNECTS, static_cast<long>(o_.connections + 4));
    thread_ = std::thread([this] { Loop(); });
    // A token up front: wrong credentials or endpoints fail before any work.
    std::promise<Status> p;
    auto f = p.get_future();
    Post([this, &p] {
      open_waiter_ = [&p](Status s) { p.set_value(std::move(s)); };
      StartTokenFetch();
    });
    Status s = f.get();
    if (!s.ok()) {
      Stop();
      return s;
    }
    return Status::Ok();
  }

  void CheckMailboxes(const std::vector<std::string>& candidates, CheckFn done) override {
    if (candidates.empty()) {
      done({});
      return;
    }
    auto results = std::make_shared<std::vector<std::pair<std::string, MailboxVerdict>>>();
    auto left = std::make_shared<size_t>(candidates.size());
    auto finished = std::make_shared<CheckFn>(std::move(done));
    Post([this, candidates, results, left, finished] {
      for (const auto& c : candidates) {
        Mbox& mb = mbox(c);
        mb.checks.push_back([results, left, finished, c](MailboxVerdict v) {
          results->emplace_back(c, v);
          if (--*left == 0) (*finished)(std::move(*results));
        });
        Activate(mb);
      }
    });
  }

  void Submit(Delivery d, DoneFn done) override {
    auto j = std::make_unique<Job>();
    j->kind = Purpose::kImport;
    j->d = std::move(d);
    j->done = std::move(done);
    if (o_.mode == GraphOptions::Mode::kExtProps) {
      // The create's JSON is built here, on the caller's thread.
      if (!j->d.pst_message) {
        j->refused = Status::InvalidArgument("extprops: the delivery came without its structured message (an engine bug)");
      } else {
        auto plan = graph::PlanExtProps(*j->d.pst_message, o_);
        if (!plan.ok()) {
          j->refused = plan.status();
        } else {
          j->step_body = std::move(plan->create_body);
          j->later = std::move(plan->later);
          j->later_session = std::move(plan->session);
        }
      }
      j->d.bytes.reset();  // the MIME is not sent in this mode
    }
    Post([this, j = std::shared_ptr<Job>(std::move(j))]() mutable { Enqueue(std::make_unique<Job>(std::move(*j))); });
  }

  // The sink's failure for good, also when no delivery was answered with
  // it (every one in flight was left in doubt): the run must not end "done".
  Status Barrier() override {
    std::lock_guard<std::mutex> l(mu_);
    return failed_;
  }

  void Probe(const Delivery& d, ProbeFn done) override {
    auto j = std::make_shared<Job>();
    j->kind = Purpose::kProbe;
    j->d = d;
    j->d.bytes.reset();
    j->probe_done = std::move(done);
    Post([this, j] { Enqueue(std::make_unique<Job>(std::move(*j))); });
  }

  void Inventory(const std::string& mailbox, InventoryFn done) override {
    auto j = std::make_shared<Job>();
    j->kind = Purpose::kInventory;
    j->d.mailbox = mailbox;
    j->inventory_done = std::move(done);
    Post([this, j] { Enqueue(std::make_unique<Job>(std::move(*j))); });
  }

  Status Close() override {
    if (!thread_.joinable()) return Status::Ok();
    std::promise<void> p;
    auto f = p.get_future();
    Post([this, &p] {
      closing_ = true;
      FailEverything(Completion::Kind::kTransient, Status::Aborted("the graph target is closing"));
      p.set_value();
    });
    f.wait();
    Stop();
    return Barrier();
  }

 private:
  struct Mbox {
    std::string addr;
    enum class Setup : uint8_t { kNone, kBusy, kReady, kNoFolder, kBad } setup = Setup::kNone;
    bool user_known = false;
    bool user_unknowable = false;  // lookups refused (no User.Read.All): the UPN is used
    std::string user_path;         // percent-encoded id or UPN
    size_t level = 0;              // folder levels resolved so far
    std::string parent_id;         // id of the last resolved level
    std::string folder_id;
    bool after_exists = false;     // the create said ErrorFolderExists: list again
    size_t level_listed = 0;       // level+1 when that level was listed and not found
    Status bad;                    // kBad
    bool bad_unknown = false;      // kBad because the user does not exist
    std::deque<std::unique_ptr<Job>> queue;
    std::vector<std::function<void(MailboxVerdict)>> checks;
    int in_flight = 0;
    std::deque<Clock::time_point> ghosts;  // slots held after a timeout (the server may still work)
    std::deque<Clock::time_point> sent;
    std::deque<std::pair<Clock::time_point, uint64_t>> uploaded;
    uint64_t uploaded_sum = 0;
    Clock::time_point paused_until{};
    Clock::time_point setup_not_before{};
    uint32_t setup_failures = 0;
    uint32_t throttle_streak = 0;
    bool active = false;
  };

  // ---- threading ----
  void Post(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      inbox_.push_back(std::move(fn));
    }
    if (multi_) curl_multi_wakeup(multi_.get());
  }

  void Stop() {
    if (thread_.joinable()) {
      {
        std::lock_guard<std::mutex> l(mu_);
        stop_ = true;
      }
      curl_multi_wakeup(multi_.get());
      thread_.join();
    }
    for (auto& [easy, req] : running_) curl_multi_remove_handle(multi_.get(), easy);
    running_.clear();
    pool_.clear();
    multi_.reset();
  }

  void Loop() {
    while (true) {
      std::vector<std::function<void()>> work;
      {
        std::lock_guard<std::mutex> l(mu_);
        if (stop_) break;
        work.swap(inbox_);
      }
      for (auto& fn : work) fn();
      Pump();
      int running = 0;
      curl_multi_perform(multi_.get(), &running);
      ReadCompletions();
      Pump();
      long curl_ms = -1;
      curl_multi_timeout(multi_.get(), &curl_ms);
      auto now = Clock::now();
      int64_t wait = 1000;
      if (curl_ms >= 0) wait = std::min<int64_t>(wait, curl_ms);
      if (next_wake_ != Clock::time_point{}) {
        wait = std::min<int64_t>(wait, std::chrono::duration_cast<milliseconds>(next_wake_ - now).count() + 1);
      }
      wait = std::max<int64_t>(wait, 0);
      {
        std::lock_guard<std::mutex> l(mu_);
        if (!inbox_.empty() || stop_) continue;
      }
      curl_multi_poll(multi_.get(), nullptr, 0, static_cast<int>(wait), nullptr);
    }
    // Whatever is left when the thread stops is abandoned: in doubt.
    FailEverything(Completion::Kind::kTransient, Status::Aborted("the graph target stopped"));
  }

  // ---- bookkeeping ----
  Mbox& mbox(const std::string& addr) {
    auto it = mboxes_.find(addr);
    if (it != mboxes_.end()) return it->second;
    Mbox& mb = mboxes_[addr];
    mb.addr = addr;
    mb.user_path = graph::PercentEncode(addr);
    return mb;
  }

  void Activate(Mbox& mb) {
    if (!mb.active) {
      mb.active = true;
      active_.push_back(mb.addr);
    }
  }

  void Enqueue(std::unique_ptr<Job> j) {
    if (!sink_bad_.ok()) {
      Finish(std::move(j), Completion::SinkBad(sink_bad_));
      return;
    }
    if (j->kind == Purpose::kImport && j->refused) {
      Status why = *j->refused;
      Finish(std::move(j), Completion::ItemBad(std::move(why)));
      return;
    }
    if (j->kind == Purpose::kImport && o_.mode == GraphOptions::Mode::kImportMime) {
      const uint64_t n = j->d.bytes ? j->d.bytes->size() : 0;
      const uint64_t b64 = graph::Base64Size(n);
      if (b64 > o_.max_request_bytes) {
        Finish(std::move(j),
               Completion::ItemBad(Status::TooLarge(fmt::format(
                   "the item is {} bytes, {} in base64: over Graph's {} MiB request cap (importMime has no upload "
                   "session); use --graph-mode extprops, or --max-item-size {} or smaller",
                   n, b64, o_.max_request_bytes >> 20, o_.max_request_bytes / 4 * 3))));
        return;
      }
      if (b64 > o_.upload_budget_bytes) {
        Finish(std::move(j), Completion::ItemBad(Status::TooLarge(
                                 fmt::format("the item's {} base64 bytes exceed the whole upload budget", b64))));
        return;
      }
    }
    Mbox& mb = mbox(j->d.mailbox);
    if (mb.setup == Mbox::Setup::kNoFolder && j->kind == Purpose::kImport) mb.setup = Mbox::Setup::kNone;
    mb.queue.push_back(std::move(j));
    Activate(mb);
  }

  // Calls the job's callback exactly once.
  void Finish(std::unique_ptr<Job> j, Completion c) {
    switch (j->kind) {
      case Purpose::kImport:
        if (j->done) j->done(j->d.id, std::move(c));
        break;
      case Purpose::kProbe: {
        ProbeResult r;
        r.kind = ProbeResult::Kind::kFailed;
        r.error = c.error;
        r.mailbox_bad = c.kind == Completion::Kind::kMailboxBad;
        if (j->probe_done) j->probe_done(j->d.id, std::move(r));
        break;
      }
      case Purpose::kInventory:
        if (j->inventory_done) j->inventory_done(c.error.ok() ? Status::IOError("inventory failed") : c.error);
        break;
      default:
        break;
    }
  }

  void FailEverything(Completion::Kind k, const Status& why) {
    for (auto& [easy, req] : running_) {
      curl_multi_remove_handle(multi_.get(), easy);
      if (req->job) {
        // In doubt: the item may be there whole or in part (probed before any resend).
        const bool doubt = req->purpose == Purpose::kImport || req->purpose == Purpose::kCreate ||
                           PartialExists(*req->job);
        // (Whatever failed: a request the server took may be stored when it
        // ends, and a failed delivery is sent again without a probe.)
        Completion c = k == Completion::Kind::kTransient || doubt ? Completion::Transient(why, milliseconds(0), doubt)
                                                                  : Completion::Failure(k, why);
        Finish(std::move(req->job), std::move(c));
      }
    }
    running_.clear();
    for (auto& [addr, mb] : mboxes_) {
      while (!mb.queue.empty()) {
        auto j = std::move(mb.queue.front());
        mb.queue.pop_front();
        Completion c = k == Completion::Kind::kTransient || PartialExists(*j)
                           ? Completion::Transient(why, milliseconds(0), PartialExists(*j))
                           : Completion::Failure(k, why);
        Finish(std::move(j), std::move(c));
      }
      for (auto& ch : mb.checks) ch(MailboxVerdict::kUnknowable);
      mb.checks.clear();
    }
    for (auto& dj : delayed_) {
      const bool partial = PartialExists(*dj.second);
      Finish(std::move(dj.second), partial ? Completion::Transient(why, milliseconds(0), true) : Completion::Failure(k, why));
    }
    delayed_.clear();
  }

  // An extprops delivery whose item was created and is not finished: the
  // server holds a partial item that a probe must find and remove.
  static bool PartialExists(const Job& j) { return j.kind == Purpose::kImport && !j.created_id.empty(); }

  void SetSinkBad(const Status& s) {
    if (sink_bad_.ok()) {
      sink_bad_ = s;
      std::lock_guard<std::mutex> l(mu_);
      failed_ = s;
    }
    if (open_waiter_) {
      auto w = std::move(open_waiter_);
      open_waiter_ = nullptr;
      w(s);
    }
    FailEverything(Completion::Kind::kSinkBad, s);
  }

  void SetMailboxBad(Mbox& mb, const Status& s, bool unknown) {
    mb.setup = Mbox::Setup::kBad;
    mb.bad = s;
    mb.bad_unknown = unknown;
  }

  milliseconds Backoff(uint32_t failures) {
    uint64_t base = o_.backoff_base_ms;
    for (uint32_t i = 1; i < failures && base < o_.backoff_max_ms; ++i) base *= 2;
    base = std::min<uint64_t>(base, o_.backoff_max_ms);
    std::uniform_int_distribution<uint64_t> jitter(0, base / 2);
    return milliseconds(base + jitter(rng_));
  }

  void Wake(Clock::time_point t) {
    if (next_wake_ == Clock::time_point{} || t < next_wake_) next_wake_ = t;
  }

  // ---- the limiter ----
  void Prune(Mbox& mb, Clock::time_point now) {
    const auto rw = o_.request_window + o_.window_margin;
    while (!mb.sent.empty() && mb.sent.front() + rw <= now) mb.sent.pop_front();
    const auto uw = o_.upload_window + o_.window_margin;
    while (!mb.uploaded.empty() && mb.uploaded.front().first + uw <= now) {
      mb.uploaded_sum -= mb.uploaded.front().second;
      mb.uploaded.pop_front();
    }
    while (!mb.ghosts.empty() && mb.ghosts.front() <= now) mb.ghosts.pop_front();
  }

  // Can one more request with `bytes` of body go to this mailbox now? Sets
  // the wake-up time when not.
  bool CanSend(Mbox& mb, uint64_t bytes, Clock::time_point now) {
    if (mb.paused_until > now) {
      Wake(mb.paused_until);
      return false;
    }
    Prune(mb, now);
    if (mb.in_flight + static_cast<int>(mb.ghosts.size()) >= o_.max_in_flight_per_mailbox) {
      if (!mb.ghosts.empty()) Wake(mb.ghosts.front());
      return false;
    }
    if (mb.sent.size() >= o_.request_budget) {
      Wake(mb.sent.front() + o_.request_window + o_.window_margin);
      return false;
    }
    if (bytes > 0 && mb.uploaded_sum + bytes > o_.upload_budget_bytes) {
      if (!mb.uploaded.empty()) Wake(mb.uploaded.front().first + o_.upload_window + o_.window_margin);
      return false;
    }
    return true;
  }

  void Charge(Mbox& mb, uint64_t bytes, Clock::time_point now) {
    mb.sent.push_back(now);
    if (bytes > 0) {
      mb.uploaded.emplace_back(now, bytes);
      mb.uploaded_sum += bytes;
    }
    ++mb.in_flight;
  }

  bool TokenUsable(Clock::time_point now) const { return !token_.empty() && now < token_expires_; }

  void Pump() {
    if (!sink_bad_.ok() || closing_) return;
    auto now = Clock::now();
    next_wake_ = {};
    // Internal retries whose time has come go back to their queues.
    while (!delayed_.empty() && delayed_.begin()->first <= now) {
      auto j = std::move(delayed_.begin()->second);
      delayed_.erase(delayed_.begin());
      Mbox& mb = mbox(j->d.mailbox);
      mb.queue.push_front(std::move(j));
      Activate(mb);
    }
    if (!delayed_.empty()) Wake(delayed_.begin()->first);
    if (now >= token_refresh_at_ && !token_fetching_ && token_retry_at_ <= now) StartTokenFetch();
    if (token_retry_at_ > now) Wake(token_retry_at_);
    if (!TokenUsable(now)) return;  // the fetch in progress calls Pump when done
    // Round robin over the mailboxes with work, bounded by `connections`.
    size_t n = active_.size();
    for (size_t i = 0; i < n && in_flight_total_ < o_.connections; ++i) {
      const std::string addr = active_.front();
      active_.pop_front();
      Mbox& mb = mboxes_.at(addr);
      while (in_flight_total_ < o_.connections && StartNext(mb, now)) {
      }
      if (!mb.queue.empty() || !mb.checks.empty() || mb.in_flight > 0) {
        active_.push_back(addr);
      } else {
        mb.active = false;
      }
    }
  }

  // Starts one request for this mailbox if it may; false when it cannot now.
  bool StartNext(Mbox& mb, Clock::time_point now) {
    if (mb.setup == Mbox::Setup::kBad) {
      for (auto& ch : mb.checks) ch(mb.bad_unknown ? MailboxVerdict::kUnknown : MailboxVerdict::kUnknowable);
      mb.checks.clear();
      while (!mb.queue.empty()) {
        auto j = std::move(mb.queue.front());
        mb.queue.pop_front();
        // A half-built item stays in doubt for the probe (as in FailEverything).
        const bool partial = PartialExists(*j);
        Finish(std::move(j), partial ? Completion::Transient(mb.bad, milliseconds(0), true) : Completion::MailboxBad(mb.bad));
      }
      return false;
    }
    if (!mb.checks.empty() && mb.user_known) {
      for (auto& ch : mb.checks) ch(mb.user_unknowable ? MailboxVerdict::kUnknowable : MailboxVerdict::kKnown);
      mb.checks.clear();
    }
    if (mb.setup == Mbox::Setup::kBusy) return false;
    if (mb.checks.empty() && mb.queue.empty()) return false;
    if (mb.setup == Mbox::Setup::kNoFolder) {
      // Nothing there yet: probes find nothing, the inventory is empty.
      bool any_import = false;
      for (auto it = mb.queue.begin(); it != mb.queue.end();) {
        if ((*it)->kind == Purpose::kProbe) {
          auto j = std::move(*it);
          it = mb.queue.erase(it);
          ProbeResult r;
          r.kind = ProbeResult::Kind::kAbsent;
          j->probe_done(j->d.id, std::move(r));
        } else if ((*it)->kind == Purpose::kInventory) {
          auto j = std::move(*it);
          it = mb.queue.erase(it);
          j->inventory_done(std::vector<std::string>{});
        } else {
          any_import = true;
          ++it;
        }
      }
      if (!any_import) return false;
      mb.setup = Mbox::Setup::kNone;
    }
    if (mb.setup == Mbox::Setup::kNone) {
      if (mb.setup_not_before > now) {
        Wake(mb.setup_not_before);
        return false;
      }
      return StartSetupStep(mb, now);
    }
    // Ready.
    if (mb.queue.empty()) return false;
    Job& j = *mb.queue.front();
    auto req = std::make_unique<Request>();
    req->mailbox = mb.addr;
    PrepareRequest(mb, j, *req);
    if (!CanSend(mb, req->payload.size(), now)) {
      if (!req->body.empty()) j.step_body = std::move(req->body);  // built once, kept for later
      return false;
    }
    req->job = std::move(mb.queue.front());
    mb.queue.pop_front();
    Charge(mb, req->payload.size(), now);
    req->charged = true;
    Launch(std::move(req));
    return true;
  }

  // The next request of a job: its purpose, method, URL and body (moved out
  // of job.step_body, or a slice of an attachment for upload chunks).
  void PrepareRequest(const Mbox& mb, Job& j, Request& req) {
    const std::string user = fmt::format("{}/v1.0/users/{}", o_.graph_url, mb.user_path);
    const std::string folder = user + "/mailFolders/" + graph::PercentEncode(mb.folder_id);
    req.method = "POST";
    req.content_type = "application/json";
    switch (j.kind) {
      case Purpose::kImport:
        if (o_.mode == GraphOptions::Mode::kImportMime) {
          req.purpose = Purpose::kImport;
          req.url = fmt::format("{}/beta/users/{}/mailFolders/{}/importMime", o_.graph_url, mb.user_path,
                                graph::PercentEncode(mb.folder_id));
          if (j.step_body.empty()) j.step_body = graph::Base64(*j.d.bytes);
          req.body = std::move(j.step_body);
          req.content_type = "text/plain";
        } else if (j.after_discard) {
          req.purpose = Purpose::kDiscard;
          req.url = fmt::format("{}/messages/{}/permanentDelete", user, graph::PercentEncode(j.created_id));
          req.content_type.clear();
        } else if (j.created_id.empty()) {
          req.purpose = Purpose::kCreate;
          req.url = folder + "/messages";
          req.body = std::move(j.step_body);
        } else {
          const pst::Attachment& a = j.d.pst_message->attachments[j.later[j.part]];
          const std::string msg = fmt::format("{}/messages/{}/attachments", user, graph::PercentEncode(j.created_id));
          if (!j.later_session[j.part]) {
            req.purpose = Purpose::kAttach;
            req.url = msg;
            if (j.step_body.empty()) {
              core::JsonWriter w(&j.step_body);
              graph::WriteFileAttachment(w, &j.step_body, a);
            }
            req.body = std::move(j.step_body);
          } else if (j.upload_url.empty()) {
            req.purpose = Purpose::kSession;
            req.url = msg + "/createUploadSession";
            if (!j.step_body.empty()) {
              req.body = std::move(j.step_body);
              break;
            }
            core::JsonWriter w(&req.body);
            w.BeginObject().Key("AttachmentItem").BeginObject().Field("attachmentType", "file");
            w.Field("name", a.filename.empty() ? std::string_view("attachment") : std::string_view(a.filename));
            w.Field("size", static_cast<uint64_t>(a.data.size()));
            w.Field("contentType", a.mime_type.empty() ? std::string_view("application/octet-stream")
                                                       : std::string_view(a.mime_type));
            if (!a.content_id.empty()) w.Field("contentId", a.content_id);
            w.EndObject().EndObject();
          } else {
            // A pre-authenticated URL: no Authorization header (attachment-createuploadsession).
            req.purpose = Purpose::kChunk;
            req.method = "PUT";
            req.url = j.upload_url;
            req.no_auth = true;
            req.content_type = "application/octet-stream";
            const uint64_t off = std::min<uint64_t>(j.upload_offset, a.data.size());
            const uint64_t n = std::min<uint64_t>(o_.upload_chunk_bytes, a.data.size() - off);
            req.payload = std::string_view(a.data).substr(off, n);
            req.chunk_end = off + n;
            req.content_range = fmt::format("Content-Range: bytes {}-{}/{}", off, off + n - 1, a.data.size());
            return;
          }
        }
        break;
      case Purpose::kProbe:
        if (j.discard) {
          req.purpose = Purpose::kDiscard;
          req.url = fmt::format("{}/messages/{}/permanentDelete", user, graph::PercentEncode(j.candidate));
          req.content_type.clear();
        } else if (!j.candidate.empty()) {
          req.purpose = Purpose::kProbeParts;
          req.method = "GET";
          if (j.next_url.empty()) j.parts_seen = 0;  // the first page: count from zero
          req.url = !j.next_url.empty() ? j.next_url
                                        : fmt::format("{}/messages/{}/attachments?$select=id,size", user,
                                                      graph::PercentEncode(j.candidate));
        } else {
          req.purpose = Purpose::kProbe;
          req.method = "GET";
          req.url = fmt::format(
              "{}/messages?$filter={}&$select=id&$expand={}", folder,
              graph::PercentEncode("internetMessageId eq " + graph::ODataQuote("<" + j.d.message_id + ">")),
              graph::PercentEncode(fmt::format("singleValueExtendedProperties($filter=id eq {})",
                                               graph::ODataQuote(graph::PartsProperty()))));
        }
        break;
      case Purpose::kInventory:
        req.purpose = Purpose::kInventory;
        req.method = "GET";
        req.url = !j.next_url.empty() ? j.next_url : fmt::format("{}/messages?$select=internetMessageId&$top=1000", folder);
        break;
      default:
        break;
    }
    if (req.method == "GET") req.content_type.clear();
    req.payload = req.body;
  }

  // One setup step at a time per mailbox: user, then each folder level.
  bool StartSetupStep(Mbox& mb, Clock::time_point now) {
    auto req = std::make_unique<Request>();
    req->mailbox = mb.addr;
    if (!mb.user_known) {
      // A directory read, not charged to the mailbox's Outlook limits.
      req->purpose = Purpose::kUser;
      req->method = "GET";
      req->url = fmt::format("{}/v1.0/users/{}?$select=id,userPrincipalName", o_.graph_url, mb.user_path);
    } else {
      if (mb.queue.empty()) return false;  // only checks were waiting
      if (!CanSend(mb, 0, now)) return false;
      const std::string& name = levels_[mb.level];
      const std::string base = mb.level == 0 ? fmt::format("{}/v1.0/users/{}/mailFolders", o_.graph_url, mb.user_path)
                                             : fmt::format("{}/v1.0/users/{}/mailFolders/{}/childFolders", o_.graph_url,
                                                           mb.user_path, graph::PercentEncode(mb.parent_id));
      bool create = false;
      if (!mb.after_exists && mb.level_listed == mb.level + 1) create = true;
      if (create) {
        bool any_import = false;
        for (const auto& j : mb.queue) any_import |= j->kind == Purpose::kImport;
        if (!any_import) {
          mb.setup = Mbox::Setup::kNoFolder;
          mb.level_listed = 0;
          return true;  // StartNext answers the probes
        }
        req->purpose = Purpose::kFolderCreate;
        req->method = "POST";
        req->url = base;
        std::string body;
        core::JsonWriter w(&body);
        w.BeginObject().Field("displayName", name).EndObject();
        req->body = std::move(body);
      } else {
        req->purpose = Purpose::kFolderList;
        req->method = "GET";
        req->url = fmt::format("{}?$filter={}&$select=id,displayName&$top=100", base,
                               graph::PercentEncode("displayName eq " + graph::ODataQuote(name)));
      }
      Charge(mb, req->body.size(), now);
      req->charged = true;
    }
    mb.setup = Mbox::Setup::kBusy;
    Launch(std::move(req));
    return true;
  }

  // ---- HTTP ----
  void Launch(std::unique_ptr<Request> req) {
    EasyPtr easy;
    if (!pool_.empty()) {
      easy = std::move(pool_.back());
      pool_.pop_back();
      curl_easy_reset(easy.get());
    } else {
      easy.reset(curl_easy_init());
    }
    CURL* e = easy.get();
    req->easy = std::move(easy);
    if (req->purpose != Purpose::kChunk) req->payload = req->body;
    if (req->purpose == Purpose::kFolderCreate) req->content_type = "application/json";
    curl_slist* h = nullptr;
    h = curl_slist_append(h, "Expect:");
    h = curl_slist_append(h, "Accept: application/json");
    if (req->purpose == Purpose::kToken) {
      h = curl_slist_append(h, "Content-Type: application/x-www-form-urlencoded");
    } else {
      if (!req->no_auth) {
        req->token_used = token_;
        h = curl_slist_append(h, ("Authorization: Bearer " + token_).c_str());
      }
      if (!req->content_type.empty()) h = curl_slist_append(h, ("Content-Type: " + req->content_type).c_str());
      if (!req->content_range.empty()) h = curl_slist_append(h, req->content_range.c_str());
    }
    req->headers.reset(h);
    curl_easy_setopt(e, CURLOPT_URL, req->url.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_PRIVATE, req.get());
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, WriteCb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, req.get());
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, HeaderCb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, req.get());
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, req->curl_error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_2TLS));
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o_.connect_timeout_ms));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, static_cast<long>(o_.request_timeout_ms));
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!o_.ca_file.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, o_.ca_file.c_str());
    if (o_.tls_insecure) {
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
      curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (req->method == "POST" || req->method == "PUT") {
      if (req->method == "POST") {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req->payload.size()));
      } else {
        curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req->payload.size()));
      }
      curl_easy_setopt(e, CURLOPT_READFUNCTION, ReadCb);
      curl_easy_setopt(e, CURLOPT_READDATA, req.get());
      curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, SeekCb);
      curl_easy_setopt(e, CURLOPT_SEEKDATA, req.get());
    } else {
      curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    }
    ++in_flight_total_;
    if (Tracing()) fmt::print(stderr, "graph: {} {} ...\n", req->method, TracedUrl(*req));
    curl_multi_add_handle(multi_.get(), e);
    running_.emplace(e, std::move(req));
  }

  void ReadCompletions() {
    int left = 0;
    while (CURLMsg* m = curl_multi_info_read(multi_.get(), &left)) {
      if (m->msg != CURLMSG_DONE) continue;
      CURL* e = m->easy_handle;
      const CURLcode rc = m->data.result;
      curl_multi_remove_handle(multi_.get(), e);
      auto it = running_.find(e);
      if (it == running_.end()) continue;
      std::unique_ptr<Request> req = std::move(it->second);
      running_.erase(it);
      --in_flight_total_;
      long status = 0;
      curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
      if (Tracing()) {
        // Tokens go in a header, the secret in a body, an upload URL's authtoken is cut.
        fmt::print(stderr, "graph: {} {} -> {} {}\n", req->method, TracedUrl(*req), status,
                   rc == CURLE_OK ? "" : curl_easy_strerror(rc));
      }
      // Handed to curl whole: the server may have it all (in doubt).
      const bool body_sent = req->read_pos >= req->payload.size();
      if (req->charged) {
        Mbox& mb = mbox(req->mailbox);
        --mb.in_flight;
        if (rc == CURLE_OPERATION_TIMEDOUT) {
          // The server may still be working on it: keep its slot a while.
          mb.ghosts.push_back(Clock::now() + milliseconds(o_.request_timeout_ms));
        }
      }
      EasyPtr easy = std::move(req->easy);
      OnResponse(*req, rc, status, body_sent);
      pool_.push_back(std::move(easy));
    }
  }

  // The URL as traced: an upload URL's query is its credential (authtoken).
  static std::string_view TracedUrl(const Request& r) {
    std::string_view u = r.url;
    return r.purpose == Purpose::kChunk ? u.substr(0, u.find('?')) : u;
  }

  std::string CurlFailure(const Request& r, CURLcode rc) const {
    std::string detail = r.curl_error[0] != '\0' ? r.curl_error : curl_easy_strerror(rc);
    return fmt::format("{}: {} (curl {})", PurposeName(r.purpose), detail, static_cast<int>(rc));
  }

  std::string HttpFailure(const Request& r, long status, const ErrorInfo& e) const {
    if (e.code.empty()) return fmt::format("{}: HTTP {}", PurposeName(r.purpose), status);
    return fmt::format("{}: HTTP {} {}: {}", PurposeName(r.purpose), status, e.code, e.message);
  }

  // ---- token ----
  void StartTokenFetch() {
    if (token_fetching_) return;
    token_fetching_ = true;
    auto req = std::make_unique<Request>();
    req->purpose = Purpose::kToken;
    req->method = "POST";
    req->url = fmt::format("{}/{}/oauth2/v2.0/token", o_.login_url, graph::PercentEncode(o_.tenant));
    if (cert_) {
      auto jwt = MakeAssertion(*cert_, fmt::format("{}/{}/oauth2/v2.0/token", o_.login_url, o_.tenant), o_.client_id);
      if (!jwt.ok()) {
        token_fetching_ = false;
        SetSinkBad(jwt.status());
        return;
      }
      req->body = fmt::format(
          "grant_type=client_credentials&client_id={}&client_assertion_type={}&client_assertion={}&scope={}",
          graph::PercentEncode(o_.client_id),
          graph::PercentEncode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"), *jwt,
          graph::PercentEncode(o_.scope));
    } else {
      req->body = fmt::format("grant_type=client_credentials&client_id={}&client_secret={}&scope={}",
                              graph::PercentEncode(o_.client_id), graph::PercentEncode(o_.client_secret),
                              graph::PercentEncode(o_.scope));
    }
    Launch(std::move(req));
  }

  void OnToken(Request& r, CURLcode rc, long status) {
    token_fetching_ = false;
    auto now = Clock::now();
    if (rc == CURLE_OK && status == 200) {
      simdjson::dom::element doc;
      std::string_view tok;
      int64_t expires_in = 0;
      if (!parser_.parse(r.response).get(doc) && !doc["access_token"].get(tok) && !tok.empty()) {
        simdjson::dom::element ei;
        if (!doc["expires_in"].get(ei)) {
          if (ei.is_int64()) {
            expires_in = ei.get_int64().value();
          } else if (ei.is_string()) {
            expires_in = std::atoll(std::string(ei.get_string().value()).c_str());
          }
        }
        if (expires_in <= 0) expires_in = 3599;
        token_ = std::string(tok);
        token_successes_ = 0;
        // Refresh before expiry: 5 minutes ahead, or a tenth of a short lifetime.
        const auto life = std::chrono::seconds(expires_in);
        const auto ahead = std::min<std::chrono::steady_clock::duration>(std::chrono::minutes(5), life / 10);
        token_expires_ = now + life - std::chrono::seconds(1);
        token_refresh_at_ = now + life - ahead;
        token_failures_ = 0;
        if (open_waiter_) {
          auto w = std::move(open_waiter_);
          open_waiter_ = nullptr;
          w(Status::Ok());
        }
        return;
      }
    }
    // Refused credentials, tenant or scope: the run cannot go on.
    std::string what;
    bool fatal = false;
    if (rc != CURLE_OK) {
      what = CurlFailure(r, rc);
      fatal = rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_URL_MALFORMAT ||
              rc == CURLE_SSL_CACERT_BADFILE || rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CONNECT_ERROR;
      if (rc == CURLE_PEER_FAILED_VERIFICATION) what += " (the certificate is not trusted: see --ca-file)";
    } else {
      ErrorInfo e = ParseError(parser_, r.response);
      what = fmt::format("token endpoint: HTTP {}{}{}", status, e.code.empty() ? "" : " " + e.code,
                         e.message.empty() ? "" : ": " + e.message);
      fatal = (status >= 400 && status < 500 && status != 429 && status != 408) || status == 200;
    }
    // Never the secret: the form is not quoted anywhere.
    Status s = Status::IOError(fmt::format("Microsoft identity platform refused the app (tenant {}, client {}): {}",
                                           o_.tenant, o_.client_id, what));
    ++token_failures_;
    if (fatal || token_failures_ >= o_.max_internal_attempts) {
      if (open_waiter_ != nullptr && !fatal) {
        s = Status::IOError(fmt::format("cannot get a token from {} (tenant {}): {}", o_.login_url, o_.tenant, what));
      }
      SetSinkBad(s);
      return;
    }
    token_retry_at_ = now + Backoff(token_failures_);
  }

  // ---- responses ----
  void OnResponse(Request& r, CURLcode rc, long status, bool body_sent) {
    if (r.purpose == Purpose::kToken) {
      OnToken(r, rc, status);
      return;
    }
    Mbox& mb = mbox(r.mailbox);
    auto now = Clock::now();
    if (r.purpose == Purpose::kChunk && rc == CURLE_OK && status == 401) {
      // The upload URL's own token was refused: not the app's token.
      return OnStep(mb, r, rc, status, ErrorInfo{}, r.read_pos >= r.payload.size());
    }
    if (rc == CURLE_OK && status == 401) {
      // Expired or revoked token: refresh, then the same request again. A
      // fresh token refused before any success, several times over, means
      // the app lost its access: the run cannot go on.
      if (r.token_used == token_) {
        if (token_successes_ == 0 && ++fresh_token_refusals_ >= 3) {
          Status s = Status::IOError(
              "Graph refuses the app's fresh tokens (401 InvalidAuthenticationToken); check the app's permissions");
          if (r.job) Finish(std::move(r.job), Completion::SinkBad(s));
          SetSinkBad(s);
          return;
        }
        token_.clear();
        token_refresh_at_ = now;
      }
      Requeue(mb, r);
      return;
    }
    if (rc == CURLE_OK && status >= 200 && status < 300 && r.token_used == token_) {
      ++token_successes_;
      fresh_token_refusals_ = 0;
    }
    ErrorInfo e;
    if (rc == CURLE_OK && (status < 200 || status >= 300)) e = ParseError(parser_, r.response);
    // Throttling: the whole mailbox waits.
    if (rc == CURLE_OK && (status == 429 || status == 503)) {
      ++mb.throttle_streak;
      const milliseconds wait = r.retry_after ? *r.retry_after + milliseconds(50) : Backoff(mb.throttle_streak);
      mb.paused_until = std::max(mb.paused_until, now + wait);
      // A 429 is Graph's throttling, answered before any work. A 503 may
      // come from a front end that gave up on a backend which finished the
      // work: a POST that creates something (the item, an attachment) is
      // then in doubt, probed before any resend. (A chunk, even the last,
      // is sent again: its session answers 404 once the attachment exists,
      // which OnStep takes as in doubt.)
      const bool creates =
          r.purpose == Purpose::kImport || r.purpose == Purpose::kCreate || r.purpose == Purpose::kAttach;
      if (r.job && status == 503 && creates) {
        Finish(std::move(r.job), Completion::Transient(Status::IOError(HttpFailure(r, status, e)), wait, true));
        return;
      }
      if (r.job && (r.purpose == Purpose::kImport || r.purpose == Purpose::kCreate)) {
        Finish(std::move(r.job), Completion::Transient(Status::IOError(HttpFailure(r, status, e)), wait, false));
        return;
      }
      if (r.job && ++r.job->throttles > 4 * o_.max_internal_attempts) {
        // A step or a probe throttled without end: give the job back to the
        // engine (an item begun stays in doubt: the probe settles it).
        const bool partial = PartialExists(*r.job);
        Finish(std::move(r.job), Completion::Transient(Status::IOError(fmt::format("{} (throttled {} times)",
                                                                                     HttpFailure(r, status, e),
                                                                                     4 * o_.max_internal_attempts)),
                                                       wait, partial));
        return;
      }
      Requeue(mb, r);
      return;
    }
    if (rc == CURLE_OK && status >= 200 && status < 300) mb.throttle_streak = 0;
    switch (r.purpose) {
      case Purpose::kUser: OnUser(mb, r, rc, status, e); break;
      case Purpose::kFolderList: OnFolderList(mb, r, rc, status, e); break;
      case Purpose::kFolderCreate: OnFolderCreate(mb, r, rc, status, e); break;
      case Purpose::kImport: OnImport(mb, r, rc, status, e, body_sent); break;
      case Purpose::kProbe: OnProbe(mb, r, rc, status, e); break;
      case Purpose::kInventory: OnInventory(mb, r, rc, status, e); break;
      case Purpose::kCreate: OnImport(mb, r, rc, status, e, body_sent); break;
      case Purpose::kAttach:
      case Purpose::kSession:
      case Purpose::kChunk: OnStep(mb, r, rc, status, e, body_sent); break;
      case Purpose::kProbeParts: OnProbeParts(mb, r, rc, status, e); break;
      case Purpose::kDiscard: OnDiscard(mb, r, rc, status, e); break;
      default: break;
    }
  }

  // Puts a request's work back where it came from (after a 401 or a throttle).
  void Requeue(Mbox& mb, Request& r) {
    if (r.job) {
      if (!r.body.empty() && r.job->kind == Purpose::kImport) r.job->step_body = std::move(r.body);
      mb.queue.push_front(std::move(r.job));
    } else if (mb.setup == Mbox::Setup::kBusy) {
      mb.setup = Mbox::Setup::kNone;
    }
    Activate(mb);
  }

  // A setup step failed for a passing reason: try again later; after too
  // many, the waiting jobs fail (kTransient: the engine retries them).
  void SetupFailed(Mbox& mb, const std::string& why) {
    mb.setup = Mbox::Setup::kNone;
    ++mb.setup_failures;
    mb.setup_not_before = Clock::now() + Backoff(mb.setup_failures);
    if (mb.setup_failures >= o_.max_internal_attempts) {
      mb.setup_failures = 0;
      Status s = Status::IOError(fmt::format("mailbox {}: {}", mb.addr, why));
      for (auto& ch : mb.checks) ch(MailboxVerdict::kUnknowable);
      mb.checks.clear();
      while (!mb.queue.empty()) {
        auto j = std::move(mb.queue.front());
        mb.queue.pop_front();
        const bool partial = PartialExists(*j);
        Finish(std::move(j), Completion::Transient(s, Backoff(4), partial));
      }
    }
    Activate(mb);
  }

  bool MailboxFatal(Mbox& mb, long status, const ErrorInfo& e, const std::string& why) {
    if (status == 404 && (e.code == "ErrorInvalidUser" || e.code == "Request_ResourceNotFound" ||
                          e.code == "ResourceNotFound" || e.code == "MailboxNotEnabledForRESTAPI")) {
      SetMailboxBad(mb, Status::NotFound(fmt::format("unknown mailbox {}: {}", mb.addr, why)), true);
      return true;
    }
    if (status == 403 || (status == 404 && e.code == "MailboxNotEnabledForRESTAPI")) {
      SetMailboxBad(mb, Status::IOError(fmt::format("mailbox {} cannot be written: {}", mb.addr, why)), false);
      return true;
    }
    return false;
  }

  void OnUser(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    if (rc != CURLE_OK) return SetupFailed(mb, CurlFailure(r, rc));
    if (status == 200) {
      simdjson::dom::element doc;
      std::string_view id;
      if (!parser_.parse(r.response).get(doc) && !doc["id"].get(id) && !id.empty()) {
        mb.user_known = true;
        mb.user_path = graph::PercentEncode(id);
        mb.setup = Mbox::Setup::kNone;
        mb.setup_failures = 0;
        Activate(mb);
        return;
      }
      return SetupFailed(mb, "user lookup: unreadable answer");
    }
    const std::string why = HttpFailure(r, status, e);
    if (status == 404) {
      SetMailboxBad(mb, Status::NotFound(fmt::format("unknown mailbox {} (no such user in the tenant)", mb.addr)), true);
      Activate(mb);
      return;
    }
    if (status == 403) {
      // No directory permission (User.Read.All): go on with the address; the
      // mail endpoints say whether it exists.
      mb.user_known = true;
      mb.user_unknowable = true;
      mb.setup = Mbox::Setup::kNone;
      Activate(mb);
      return;
    }
    if (status >= 500 || status == 408) return SetupFailed(mb, why);
    SetMailboxBad(mb, Status::IOError(fmt::format("mailbox {}: {}", mb.addr, why)), false);
    Activate(mb);
  }

  void OnFolderList(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    if (rc != CURLE_OK) return SetupFailed(mb, CurlFailure(r, rc));
    const std::string why = HttpFailure(r, status, e);
    if (status != 200) {
      if (MailboxFatal(mb, status, e, why)) return Activate(mb);
      if (status == 404 && mb.level > 0) {  // the parent went away: start over
        mb.level = 0;
        mb.parent_id.clear();
        return SetupFailed(mb, why);
      }
      if (status >= 500 || status == 408) return SetupFailed(mb, why);
      SetMailboxBad(mb, Status::IOError(fmt::format("mailbox {}: {}", mb.addr, why)), false);
      return Activate(mb);
    }
    simdjson::dom::element doc;
    simdjson::dom::array arr;
    if (parser_.parse(r.response).get(doc) || doc["value"].get(arr)) return SetupFailed(mb, "folder list: unreadable answer");
    std::string found;
    const std::string& want = levels_[mb.level];
    for (auto f : arr) {
      std::string_view name, id;
      if (f["displayName"].get(name) || f["id"].get(id)) continue;
      if (name.size() == want.size() &&
          std::equal(name.begin(), name.end(), want.begin(), [](char a, char b) {
            return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
          })) {
        found = std::string(id);
        break;
      }
    }
    mb.setup = Mbox::Setup::kNone;
    if (found.empty()) {
      if (mb.after_exists) {
        // Created by someone else, not listed yet: look again shortly.
        mb.after_exists = false;
        return SetupFailed(mb, "the folder exists but is not listed yet");
      }
      mb.level_listed = mb.level + 1;  // next step: create it
      return Activate(mb);
    }
    mb.after_exists = false;
    mb.level_listed = 0;
    AdvanceLevel(mb, found);
  }

  void AdvanceLevel(Mbox& mb, const std::string& id) {
    mb.parent_id = id;
    ++mb.level;
    mb.setup_failures = 0;
    if (mb.level == levels_.size()) {
      mb.folder_id = id;
      mb.setup = Mbox::Setup::kReady;
    } else {
      mb.setup = Mbox::Setup::kNone;
    }
    Activate(mb);
  }

  void OnFolderCreate(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    mb.level_listed = 0;
    if (rc != CURLE_OK) return SetupFailed(mb, CurlFailure(r, rc));  // listed again first: no duplicate
    const std::string why = HttpFailure(r, status, e);
    if (status == 201 || status == 200) {
      simdjson::dom::element doc;
      std::string_view id;
      if (!parser_.parse(r.response).get(doc) && !doc["id"].get(id) && !id.empty()) {
        return AdvanceLevel(mb, std::string(id));
      }
      return SetupFailed(mb, "folder creation: unreadable answer");
    }
    if (e.code == "ErrorFolderExists" || status == 409) {
      mb.after_exists = true;  // a concurrent create won: list again
      mb.setup = Mbox::Setup::kNone;
      return Activate(mb);
    }
    if (MailboxFatal(mb, status, e, why)) return Activate(mb);
    if (status >= 500 || status == 408) return SetupFailed(mb, why);
    SetMailboxBad(mb, Status::IOError(fmt::format("mailbox {}: cannot create folder '{}': {}", mb.addr, o_.folder, why)),
                  false);
    Activate(mb);
  }

  // The folder id went stale (deleted on the server): find or create it again.
  void ForgetFolder(Mbox& mb) {
    mb.setup = Mbox::Setup::kNone;
    mb.level = 0;
    mb.parent_id.clear();
    mb.folder_id.clear();
    mb.level_listed = 0;
  }

  void OnImport(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e, bool body_sent) {
    auto job = std::move(r.job);
    Activate(mb);
    if (rc != CURLE_OK) {
      const bool connect_failed = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST;
      const bool doubt = body_sent && !connect_failed;
      // After a timeout the server may still store it: probe only once it
      // would have finished.
      const milliseconds after = rc == CURLE_OPERATION_TIMEDOUT ? milliseconds(o_.request_timeout_ms) : milliseconds(0);
      return Finish(std::move(job), Completion::Transient(Status::IOError(CurlFailure(r, rc)), after, doubt));
    }
    const std::string why = HttpFailure(r, status, e);
    if (status == 201 || status == 200) {
      simdjson::dom::element doc;
      std::string_view id;
      if (!parser_.parse(r.response).get(doc) && !doc["id"].get(id) && !id.empty()) {
        if (r.purpose == Purpose::kCreate && !job->later.empty()) {
          // Attachments follow, one request at a time, ahead of other work.
          job->created_id = std::string(id);
          job->part = 0;
          job->step_body.clear();
          job->step_attempts = 0;
          mb.queue.push_front(std::move(job));
          return;
        }
        return Finish(std::move(job), Completion::Done(std::string(id)));
      }
      // Created, but no id: it is there; the probe finds it.
      return Finish(std::move(job),
                    Completion::Transient(Status::IOError(fmt::format("{}: 201 without an id", PurposeName(r.purpose))),
                                          milliseconds(0), true));
    }
    if (MailboxFatal(mb, status, e, why)) return Finish(std::move(job), Completion::MailboxBad(mb.bad));
    if (status == 404 && (e.code == "ErrorItemNotFound" || e.code.empty())) {
      ForgetFolder(mb);
      return Finish(std::move(job), Completion::Transient(Status::IOError(why), milliseconds(0), false));
    }
    if (status == 413) {
      const size_t n = job->d.bytes ? job->d.bytes->size() : 0;
      Status s = Status::TooLarge(fmt::format("{} (the item is {} bytes before base64)", why, n));
      return Finish(std::move(job), Completion::ItemBad(std::move(s)));
    }
    if (status >= 500 || status == 408) {
      // 500/504: the backend may have finished the work.
      return Finish(std::move(job), Completion::Transient(Status::IOError(why), r.retry_after.value_or(milliseconds(0)),
                                                          status != 501 && status != 505));
    }
    Finish(std::move(job), Completion::ItemBad(Status::InvalidArgument(why)));
  }

  // extprops, after the create: attachments, upload sessions and chunks.
  // The item exists on the server from here on, so every way out that does
  // not finish it either removes it (kDiscard, then the outcome) or leaves
  // it in doubt for the probe, which removes a partial item.
  void OnStep(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e, bool body_sent) {
    auto job = std::move(r.job);
    Activate(mb);
    const std::string why = rc != CURLE_OK ? CurlFailure(r, rc) : HttpFailure(r, status, e);
    auto retry_step = [&](milliseconds after) {
      if (++job->step_attempts > o_.max_internal_attempts) {
        return Finish(std::move(job), Completion::Transient(Status::IOError(why), milliseconds(0), true));
      }
      if (r.purpose != Purpose::kChunk && !r.body.empty()) job->step_body = std::move(r.body);
      delayed_.emplace(Clock::now() + std::max(after, Backoff(job->step_attempts)), std::move(job));
    };
    auto next_part = [&]() {
      job->upload_url.clear();
      job->upload_offset = 0;
      job->step_body.clear();
      job->step_attempts = 0;
      if (++job->part == job->later.size()) {
        std::string id = job->created_id;
        return Finish(std::move(job), Completion::Done(std::move(id)));
      }
      mb.queue.push_front(std::move(job));
    };
    // A chunk is safe to send again (the session says where it stands),
    // except the last: once it lands the session ends and the attachment
    // exists, so a resend would open a new session and attach it twice. An
    // attachment POST or a last chunk that may have been stored is in doubt:
    // the probe decides (it counts the attachments). Opening a session
    // again is harmless (an unused one expires).
    const bool last_chunk = r.purpose == Purpose::kChunk &&
                            r.chunk_end == job->d.pst_message->attachments[job->later[job->part]].data.size();
    auto in_doubt = [&]() {
      const milliseconds after = rc == CURLE_OPERATION_TIMEDOUT ? milliseconds(o_.request_timeout_ms) : milliseconds(0);
      Finish(std::move(job), Completion::Transient(Status::IOError(why), after, true));
    };
    if (rc != CURLE_OK) {
      const bool connect_failed = rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST;
      if (!body_sent || connect_failed || r.purpose == Purpose::kSession ||
          (r.purpose == Purpose::kChunk && !last_chunk)) {
        return retry_step(milliseconds(0));
      }
      return in_doubt();
    }
    if (last_chunk && (status >= 500 || status == 408 || status == 404)) {
      // The server may have finished the attachment before failing (or, 404,
      // the session ended because it did): never a new session for it.
      return in_doubt();
    }
    switch (r.purpose) {
      case Purpose::kAttach:
        if (status == 201 || status == 200) return next_part();
        break;
      case Purpose::kSession:
        if (status == 201 || status == 200) {
          simdjson::dom::element doc;
          std::string_view url;
          if (parser_.parse(r.response).get(doc) || doc["uploadUrl"].get(url) || url.empty()) {
            return retry_step(milliseconds(0));
          }
          // The upload host differs from Graph's (outlook.office.com); it
          // gets no token, but still only https (or http to loopback).
          // Its query is a credential (authtoken): never quoted.
          if (auto ok = graph::CheckEndpointUrl("uploadUrl", url.substr(0, url.find('?'))); !ok.ok()) {
            return Discard(mb, std::move(job), Completion::ItemBad(ok));
          }
          job->upload_url = std::string(url);
          job->upload_offset = 0;
          job->step_body.clear();
          job->step_attempts = 0;
          mb.queue.push_front(std::move(job));
          return;
        }
        break;
      case Purpose::kChunk:
        if (status == 201) return next_part();  // the last chunk: the attachment exists
        if (status == 200 || status == 416) {
          // Where the session stands: nextExpectedRanges ["N-"] (416: a
          // chunk sent again after a lost answer, or out of order).
          simdjson::dom::element doc;
          simdjson::dom::array ranges;
          uint64_t next = r.chunk_end;
          if (!parser_.parse(r.response).get(doc) && !doc["nextExpectedRanges"].get(ranges)) {
            for (auto v : ranges) {
              std::string_view t;
              if (!v.get(t)) next = std::strtoull(std::string(t).c_str(), nullptr, 10);
              break;
            }
          }
          // Attempts count failures without progress: a session that moves
          // on, however bumpily, is not given up.
          if (next > job->upload_offset) {
            job->step_attempts = 0;
          } else if (++job->step_attempts > o_.max_internal_attempts) {
            return Finish(std::move(job), Completion::Transient(Status::IOError(why), milliseconds(0), true));
          }
          job->upload_offset = next;
          mb.queue.push_front(std::move(job));
          return;
        }
        if (status == 401 || status == 404) {
          // The session ended or its token went stale: open a new one.
          job->upload_url.clear();
          job->upload_offset = 0;
          return retry_step(milliseconds(0));
        }
        break;
      default:
        break;
    }
    if (MailboxFatal(mb, status, e, why)) {
      // The partial item stays in doubt: the next run's probe finds it by
      // its marker and removes it (failed, the item would be sent again
      // beside it, unprobed).
      return Finish(std::move(job),
                    Completion::Transient(Status::IOError(fmt::format(
                                              "{} (a partial copy of the item, id {}, is left for the next run's probe)",
                                              mb.bad.ToString(), job->created_id)),
                                          milliseconds(0), true));
    }
    if (status == 404 && r.purpose != Purpose::kChunk) {
      // The item went away under us: nothing partial is left; send it again.
      job->created_id.clear();
      return Finish(std::move(job), Completion::Transient(Status::IOError(why), milliseconds(0), false));
    }
    if (status >= 500 || status == 408) {
      // A POST the backend may have finished is in doubt; the rest is retried.
      if (r.purpose == Purpose::kAttach && status != 501 && status != 505) {
        return Finish(std::move(job), Completion::Transient(Status::IOError(why), r.retry_after.value_or(milliseconds(0)), true));
      }
      return retry_step(r.retry_after.value_or(milliseconds(0)));
    }
    // Refused for good (too large, malformed): the item cannot go; the part
    // already there is removed first.
    Status bad = status == 413 || e.code == "ErrorMessageSizeExceeded" ? Status::TooLarge(why) : Status::InvalidArgument(why);
    Discard(mb, std::move(job), Completion::ItemBad(std::move(bad)));
  }

  // Removes a delivery's partial item, then reports `outcome`.
  void Discard(Mbox& mb, std::unique_ptr<Job> job, Completion outcome) {
    job->after_discard = std::move(outcome);
    job->step_attempts = 0;
    mb.queue.push_front(std::move(job));
    Activate(mb);
  }

  // permanentDelete of a partial item: for a delivery, then its outcome; for
  // a probe, then a new look (a complete copy may be there too).
  void OnDiscard(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    auto job = std::move(r.job);
    Activate(mb);
    const bool gone = rc == CURLE_OK && (status == 204 || status == 200 || status == 404);
    const std::string why = rc != CURLE_OK ? CurlFailure(r, rc) : HttpFailure(r, status, e);
    if (job->kind == Purpose::kImport) {
      if (!gone && ++job->step_attempts <= o_.max_internal_attempts && !MailboxFatal(mb, status, e, why)) {
        delayed_.emplace(Clock::now() + Backoff(job->step_attempts), std::move(job));
        return;
      }
      Completion c = std::move(*job->after_discard);
      if (!gone) {
        // Left for a later probe: in doubt keeps the item's intent, so a
        // rerun finds the partial item and removes it before resending.
        c = Completion::Transient(
            Status::IOError(fmt::format("{}; the partial item could not be removed: {}", c.error.ToString(), why)),
            milliseconds(0), true);
      }
      job->created_id.clear();
      return Finish(std::move(job), std::move(c));
    }
    if (!gone) {
      if (MailboxFatal(mb, status, e, why)) return Finish(std::move(job), Completion::MailboxBad(mb.bad));
      return RetryLater(mb, std::move(job), why);
    }
    job->candidate.clear();
    job->discard = false;
    if (++job->attempts >= o_.max_internal_attempts) {
      return Finish(std::move(job), Completion::Transient(Status::IOError("probe: partial items keep coming back"),
                                                          milliseconds(0), false));
    }
    mb.queue.push_front(std::move(job));
  }

  // A marked item's attachments: all there, or the item is partial.
  void OnProbeParts(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    simdjson::dom::element doc;
    simdjson::dom::array arr;
    auto job = TakeListAnswer(mb, r, rc, status, "probe", &doc, &arr);
    if (job == nullptr) return;
    const std::string why = HttpFailure(r, status, e);
    if (status == 200) {
      job->parts_seen += arr.size();
      std::string_view next;
      if (!doc["@odata.nextLink"].get(next) && !next.empty()) {
        // The attachment list is a paged collection: count every page, and
        // only at the Graph endpoint we were given.
        if (next.rfind(o_.graph_url + "/", 0) != 0) {
          return Finish(std::move(job), Completion::Transient(
                                            Status::IOError(fmt::format("probe: nextLink leaves {}", o_.graph_url)),
                                            milliseconds(0), false));
        }
        job->next_url = std::string(next);
        mb.queue.push_front(std::move(job));
        return;
      }
      const uint64_t n = job->parts_seen;
      job->parts_seen = 0;
      job->next_url.clear();
      if (n == job->expected_parts) {
        ProbeResult res;
        res.kind = ProbeResult::Kind::kPresent;
        res.remote_ref = job->candidate;
        return job->probe_done(job->d.id, std::move(res));
      }
      job->discard = true;  // partial (or an attachment sent twice): remove it
      mb.queue.push_front(std::move(job));
      return;
    }
    job->parts_seen = 0;
    job->next_url.clear();
    if (MailboxFatal(mb, status, e, why)) return Finish(std::move(job), Completion::MailboxBad(mb.bad));
    if (status == 404) {  // gone meanwhile: look again
      job->candidate.clear();
      mb.queue.push_front(std::move(job));
      return;
    }
    RetryLater(mb, std::move(job), why);
  }

  void RetryLater(Mbox& mb, std::unique_ptr<Job> j, const std::string& why) {
    if (++j->attempts >= o_.max_internal_attempts) {
      return Finish(std::move(j), Completion::Transient(Status::IOError(why), milliseconds(0), false));
    }
    delayed_.emplace(Clock::now() + Backoff(j->attempts), std::move(j));
    (void)mb;
  }

  // What a probe's and an inventory page's answers start with: the job back
  // from the request, the mailbox active again, and a retry later (null
  // returned) for a failed transfer or a 200 whose body is not JSON with a
  // "value" array ("<what>: unreadable answer"). On a 200, *doc and *arr
  // view parser_'s document: valid until its next parse.
  std::unique_ptr<Job> TakeListAnswer(Mbox& mb, Request& r, CURLcode rc, long status, std::string_view what,
                                      simdjson::dom::element* doc, simdjson::dom::array* arr) {
    auto job = std::move(r.job);
    Activate(mb);
    if (rc != CURLE_OK) {
      RetryLater(mb, std::move(job), CurlFailure(r, rc));
      return nullptr;
    }
    if (status == 200 && (parser_.parse(r.response).get(*doc) || (*doc)["value"].get(*arr))) {
      RetryLater(mb, std::move(job), fmt::format("{}: unreadable answer", what));
      return nullptr;
    }
    return job;
  }

  void OnProbe(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    simdjson::dom::element doc;
    simdjson::dom::array arr;
    auto job = TakeListAnswer(mb, r, rc, status, "probe", &doc, &arr);
    if (job == nullptr) return;
    const std::string why = HttpFailure(r, status, e);
    if (status == 200) {
      ProbeResult res;
      res.kind = ProbeResult::Kind::kAbsent;
      for (auto m : arr) {
        std::string_view id;
        if (m["id"].get(id)) continue;
        // An item with attachments sent after its create counts only when
        // they are all there: look at them first.
        uint64_t parts = 0;
        simdjson::dom::array props;
        if (!m["singleValueExtendedProperties"].get(props)) {
          for (auto p : props) {
            std::string_view pid, value;
            if (p["id"].get(pid) || p["value"].get(value)) continue;
            if (pid.size() == graph::PartsProperty().size() &&
                std::equal(pid.begin(), pid.end(), graph::PartsProperty().begin(), [](char a, char b) {
                  return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
                })) {
              // An unreadable count can never match: the item is replaced.
              char* end = nullptr;
              const std::string v(value);
              parts = std::strtoull(v.c_str(), &end, 10);
              if (v.empty() || end == nullptr || *end != '\0' || parts == 0) parts = UINT64_MAX;
            }
          }
        }
        if (parts > 0) {
          job->candidate = std::string(id);
          job->expected_parts = parts;
          job->parts_seen = 0;
          job->next_url.clear();
          mb.queue.push_front(std::move(job));
          return;
        }
        res.kind = ProbeResult::Kind::kPresent;
        res.remote_ref = std::string(id);
        break;
      }
      return job->probe_done(job->d.id, std::move(res));
    }
    if (MailboxFatal(mb, status, e, why)) return Finish(std::move(job), Completion::MailboxBad(mb.bad));
    if (status == 404) {
      ForgetFolder(mb);
      mb.queue.push_front(std::move(job));
      return;
    }
    RetryLater(mb, std::move(job), why);
  }

  void OnInventory(Mbox& mb, Request& r, CURLcode rc, long status, const ErrorInfo& e) {
    simdjson::dom::element doc;
    simdjson::dom::array arr;
    auto job = TakeListAnswer(mb, r, rc, status, "inventory", &doc, &arr);
    if (job == nullptr) return;
    const std::string why = HttpFailure(r, status, e);
    if (status == 200) {
      for (auto m : arr) {
        std::string_view id;
        if (m["internetMessageId"].get(id)) {
          job->ids.emplace_back();
          continue;
        }
        if (id.size() >= 2 && id.front() == '<' && id.back() == '>') id = id.substr(1, id.size() - 2);
        job->ids.emplace_back(id);
      }
      std::string_view next;
      if (!doc["@odata.nextLink"].get(next) && !next.empty()) {
        // Follow it verbatim, but only to the Graph endpoint we were given.
        if (next.rfind(o_.graph_url + "/", 0) != 0) {
          return job->inventory_done(Status::IOError(fmt::format("inventory: nextLink leaves {}", o_.graph_url)));
        }
        job->next_url = std::string(next);
        job->attempts = 0;
        mb.queue.push_front(std::move(job));
        return;
      }
      return job->inventory_done(std::move(job->ids));
    }
    if (MailboxFatal(mb, status, e, why)) return job->inventory_done(mb.bad);
    if (status == 404) {
      ForgetFolder(mb);
      job->next_url.clear();
      job->ids.clear();
      mb.queue.push_front(std::move(job));
      return;
    }
    RetryLater(mb, std::move(job), why);
  }

  Target target_;
  GraphOptions o_;
  std::vector<std::string> levels_;
  std::mt19937_64 rng_;

  std::mutex mu_;
  std::vector<std::function<void()>> inbox_;  // guarded by mu_
  bool stop_ = false;                         // guarded by mu_
  Status failed_;                             // guarded by mu_: sink_bad_, for Barrier/Close
  std::thread thread_;

  // I/O thread only from here on.
  MultiPtr multi_;
  std::unordered_map<CURL*, std::unique_ptr<Request>> running_;
  std::vector<EasyPtr> pool_;
  simdjson::dom::parser parser_;
  std::unordered_map<std::string, Mbox> mboxes_;
  std::deque<std::string> active_;
  std::multimap<Clock::time_point, std::unique_ptr<Job>> delayed_;
  size_t in_flight_total_ = 0;
  Clock::time_point next_wake_{};
  bool closing_ = false;
  Status sink_bad_;
  std::function<void(Status)> open_waiter_;
  std::optional<ClientCert> cert_;
  std::string token_;
  Clock::time_point token_expires_{};
  Clock::time_point token_refresh_at_{};
  Clock::time_point token_retry_at_{};
  bool token_fetching_ = false;
  uint32_t token_failures_ = 0;
  uint64_t token_successes_ = 0;      // 2xx answers to the current token
  uint32_t fresh_token_refusals_ = 0;  // 401s to tokens that never worked
};

}  // namespace

Result<std::unique_ptr<Sink>> MakeGraphSink(const Target& target, GraphOptions options) {
  if (target.kind != Target::Kind::kGraph) return Status::InvalidArgument("not a graph target");
  return std::unique_ptr<Sink>(new GraphSink(target, std::move(options)));
}

}  // namespace wxa::sinks
