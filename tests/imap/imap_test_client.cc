#include "tests/imap/imap_test_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

namespace wxa::test {

namespace {

std::string OpenSslErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "no OpenSSL error queued" : out;
}

bool IsIpAddress(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  return inet_pton(AF_INET, host.c_str(), &a4) == 1 || inet_pton(AF_INET6, host.c_str(), &a6) == 1;
}

// "{123}" / "{123+}" / "~{123}" at the end of a line (CRLF already removed).
std::optional<size_t> TrailingLiteral(std::string_view line) {
  if (line.empty() || line.back() != '}') return std::nullopt;
  size_t open = line.rfind('{');
  if (open == std::string_view::npos) return std::nullopt;
  std::string_view inner = line.substr(open + 1, line.size() - open - 2);
  if (!inner.empty() && inner.back() == '+') inner.remove_suffix(1);
  if (inner.empty() || inner.size() > 12) return std::nullopt;
  size_t n = 0;
  for (char c : inner) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<size_t>(c - '0');
  }
  return n;
}

bool StartsWithNoCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(s[i])) !=
        std::tolower(static_cast<unsigned char>(prefix[i])))
      return false;
  }
  return true;
}

}  // namespace

struct ImapTestClient::Tls {
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  ~Tls() {
    if (ssl != nullptr) SSL_free(ssl);
    if (ctx != nullptr) SSL_CTX_free(ctx);
  }
};

std::string ImapReply::code() const {
  size_t sp = status.find(' ');
  if (sp == std::string::npos || sp + 1 >= status.size() || status[sp + 1] != '[') return "";
  size_t close = status.find(']', sp);
  if (close == std::string::npos) return "";
  return status.substr(sp + 2, close - sp - 2);
}

std::string ImapReply::Dump() const {
  std::string out;
  for (const auto& u : untagged) out += u + "\n";
  out += tag + " " + status;
  return out;
}

Result<std::unique_ptr<ImapTestClient>> ImapTestClient::Connect(uint16_t port,
                                                                const ImapTlsOptions* implicit_tls,
                                                                int timeout_ms) {
  std::unique_ptr<ImapTestClient> c(new ImapTestClient());
  c->timeout_ms_ = timeout_ms;
  c->fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (c->fd_ < 0) return Status::FromErrno("socket", "", errno);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(c->fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    return Status::FromErrno("connect", "127.0.0.1:" + std::to_string(port), errno);
  }
  int one = 1;
  ::setsockopt(c->fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (implicit_tls != nullptr) WXA_RETURN_IF_ERROR(c->DoHandshake(*implicit_tls));
  // Dovecot greets with a notice first when its auth process is still
  // starting; the real greeting follows.
  for (int i = 0; i < 5; ++i) {
    WXA_ASSIGN_OR_RETURN(std::string line, c->ReadResponse());
    if (line.find("Waiting for authentication process") != std::string::npos) continue;
    c->greeting_ = line;
    c->NoteCapabilities(line);
    if (line.rfind("* OK", 0) != 0 && line.rfind("* PREAUTH", 0) != 0) {
      return Status::IOError("unexpected greeting: " + line);
    }
    return c;
  }
  return Status::IOError("no greeting after 5 notices");
}

ImapTestClient::~ImapTestClient() {
  tls_.reset();
  if (fd_ >= 0) ::close(fd_);
}

bool ImapTestClient::tls() const { return tls_ != nullptr && tls_->ssl != nullptr; }

std::string ImapTestClient::tls_version() const {
  return tls() ? SSL_get_version(tls_->ssl) : "";
}

void ImapTestClient::set_timeout_ms(int ms) { timeout_ms_ = ms; }

Status ImapTestClient::DoHandshake(const ImapTlsOptions& opt) {
  auto t = std::make_unique<Tls>();
  t->ctx = SSL_CTX_new(TLS_client_method());
  if (t->ctx == nullptr) return Status::IOError("SSL_CTX_new: " + OpenSslErrors());
  if (SSL_CTX_load_verify_locations(t->ctx, opt.ca_file.c_str(), nullptr) != 1) {
    return Status::IOError("loading CA file " + opt.ca_file + ": " + OpenSslErrors());
  }
  SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, nullptr);
  t->ssl = SSL_new(t->ctx);
  if (t->ssl == nullptr) return Status::IOError("SSL_new: " + OpenSslErrors());
  if (IsIpAddress(opt.host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), opt.host.c_str());
  } else {
    SSL_set_tlsext_host_name(t->ssl, opt.host.c_str());
    SSL_set1_host(t->ssl, opt.host.c_str());
  }
  SSL_set_fd(t->ssl, fd_);
  // Blocking handshake bounded by the socket timeouts.
  timeval tv{timeout_ms_ / 1000, (timeout_ms_ % 1000) * 1000};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (SSL_connect(t->ssl) != 1) {
    long v = SSL_get_verify_result(t->ssl);
    std::string why = v != X509_V_OK ? std::string("certificate verification failed: ") +
                                           X509_verify_cert_error_string(v)
                                     : OpenSslErrors();
    return Status::IOError("TLS handshake with 127.0.0.1: " + why);
  }
  if (SSL_get_verify_result(t->ssl) != X509_V_OK) {
    return Status::IOError("TLS: certificate not verified");
  }
  tls_ = std::move(t);
  return Status::Ok();
}

Status ImapTestClient::StartTls(const ImapTlsOptions& opt) {
  if (tls()) return Status::InvalidArgument("STARTTLS: TLS already active");
  WXA_ASSIGN_OR_RETURN(ImapReply r, Command("STARTTLS"));
  if (!r.ok()) return Status::IOError("STARTTLS refused: " + r.status);
  if (in_pos_ != in_.size()) {
    // Bytes after the OK would be plaintext injected before the handshake
    // (CVE-2011-0411 class): a correct server never sends them.
    return Status::Corruption("data after STARTTLS OK before the handshake");
  }
  return DoHandshake(opt);
}

Status ImapTestClient::Fill() {
  if (closed_) return Status::IOError("connection closed by the server");
  char buf[65536];
  ssize_t n;
  if (tls()) {
    int r = SSL_read(tls_->ssl, buf, sizeof buf);
    if (r <= 0) {
      int err = SSL_get_error(tls_->ssl, r);
      closed_ = true;
      if (err == SSL_ERROR_ZERO_RETURN) return Status::IOError("connection closed by the server");
      return Status::IOError("TLS read failed (" + std::to_string(err) + "): " + OpenSslErrors());
    }
    n = r;
  } else {
    pollfd p{fd_, POLLIN, 0};
    int pr = ::poll(&p, 1, timeout_ms_);
    if (pr == 0) return Status::IOError("timed out waiting for the server");
    if (pr < 0) return Status::FromErrno("poll", "", errno);
    n = ::recv(fd_, buf, sizeof buf, 0);
    if (n == 0) {
      closed_ = true;
      return Status::IOError("connection closed by the server");
    }
    if (n < 0) {
      closed_ = true;
      return Status::FromErrno("recv", "", errno);
    }
  }
  if (in_pos_ > 0 && in_pos_ == in_.size()) {
    in_.clear();
    in_pos_ = 0;
  }
  in_.append(buf, static_cast<size_t>(n));
  return Status::Ok();
}

Result<std::string> ImapTestClient::ReadLine() {
  for (;;) {
    size_t nl = in_.find('\n', in_pos_);
    if (nl != std::string::npos) {
      std::string line = in_.substr(in_pos_, nl + 1 - in_pos_);
      in_pos_ = nl + 1;
      return line;
    }
    WXA_RETURN_IF_ERROR(Fill());
  }
}

Status ImapTestClient::ReadExact(size_t n, std::string* out) {
  while (in_.size() - in_pos_ < n) WXA_RETURN_IF_ERROR(Fill());
  out->append(in_, in_pos_, n);
  in_pos_ += n;
  return Status::Ok();
}

Result<std::string> ImapTestClient::ReadResponse() {
  std::string resp;
  for (;;) {
    WXA_ASSIGN_OR_RETURN(std::string line, ReadLine());
    std::string_view body(line);
    if (body.size() >= 2 && body.substr(body.size() - 2) == "\r\n") {
      body.remove_suffix(2);
    } else if (!body.empty() && body.back() == '\n') {
      body.remove_suffix(1);
    }
    resp.append(body);
    auto lit = TrailingLiteral(body);
    if (!lit) break;
    resp += "\r\n";
    WXA_RETURN_IF_ERROR(ReadExact(*lit, &resp));
  }
  NoteCapabilities(resp);
  return resp;
}

void ImapTestClient::NoteCapabilities(const std::string& r) {
  if (StartsWithNoCase(r, "* CAPABILITY ")) {
    last_capabilities_ = r.substr(13);
    return;
  }
  // Only a status response carries a [CAPABILITY ...] code (never literal data).
  if (r.find('{') != std::string::npos) return;
  size_t p = r.find("[CAPABILITY ");
  if (p == std::string::npos) return;
  size_t e = r.find(']', p);
  if (e != std::string::npos) last_capabilities_ = r.substr(p + 12, e - p - 12);
}

Result<ImapReply> ImapTestClient::ReadReply(std::string_view tag) {
  ImapReply reply;
  reply.tag = std::string(tag);
  for (;;) {
    WXA_ASSIGN_OR_RETURN(std::string r, ReadResponse());
    if (r.size() > tag.size() && r.compare(0, tag.size(), tag) == 0 && r[tag.size()] == ' ') {
      reply.status = r.substr(tag.size() + 1);
      return reply;
    }
    reply.untagged.push_back(std::move(r));
  }
}

Status ImapTestClient::SendRaw(std::string_view bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n;
    if (tls()) {
      int r = SSL_write(tls_->ssl, bytes.data() + off, static_cast<int>(bytes.size() - off));
      if (r <= 0) {
        closed_ = true;
        return Status::IOError("TLS write failed: " + OpenSslErrors());
      }
      n = r;
    } else {
      pollfd p{fd_, POLLOUT, 0};
      int pr = ::poll(&p, 1, timeout_ms_);
      if (pr == 0) return Status::IOError("timed out writing to the server");
      n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        if (errno == EPIPE || errno == ECONNRESET) closed_ = true;
        return Status::FromErrno("send", "", errno);
      }
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

std::string ImapTestClient::NextTag() { return "t" + std::to_string(++tag_counter_); }

Result<ImapReply> ImapTestClient::Command(std::string_view command) {
  return CommandParts({ImapPart{std::string(command), std::nullopt}}, LiteralMode::kSync);
}

Result<ImapReply> ImapTestClient::CommandParts(const std::vector<ImapPart>& parts,
                                               LiteralMode mode) {
  std::string tag = NextTag();
  std::string pending = tag + " ";
  ImapReply early;  // responses read while waiting for "+"
  early.tag = tag;
  for (const auto& part : parts) {
    pending += part.text;
    if (!part.literal) continue;
    const std::string& lit = *part.literal;
    pending += "{" + std::to_string(lit.size()) + (mode == LiteralMode::kNonSync ? "+" : "") + "}\r\n";
    if (mode == LiteralMode::kNonSync) {
      pending += lit;
      continue;
    }
    WXA_RETURN_IF_ERROR(SendRaw(pending));
    pending.clear();
    for (;;) {
      WXA_ASSIGN_OR_RETURN(std::string r, ReadResponse());
      if (r.rfind("+", 0) == 0) break;
      if (r.compare(0, tag.size() + 1, tag + " ") == 0) {
        // Refused before the literal (RFC 3501 7.5): the command is over.
        early.status = r.substr(tag.size() + 1);
        return early;
      }
      early.untagged.push_back(std::move(r));
    }
    WXA_RETURN_IF_ERROR(SendRaw(lit));
  }
  pending += "\r\n";
  WXA_RETURN_IF_ERROR(SendRaw(pending));
  WXA_ASSIGN_OR_RETURN(ImapReply reply, ReadReply(tag));
  early.untagged.insert(early.untagged.end(), reply.untagged.begin(), reply.untagged.end());
  early.status = std::move(reply.status);
  return early;
}

Status ImapTestClient::Login(std::string_view user, std::string_view password) {
  WXA_ASSIGN_OR_RETURN(ImapReply r,
                       Command("LOGIN " + ImapQuote(user) + " " + ImapQuote(password)));
  if (!r.ok()) return Status::IOError("LOGIN " + std::string(user) + ": " + r.status);
  return Status::Ok();
}

Status ImapTestClient::AuthenticatePlain(std::string_view authzid, std::string_view authcid,
                                         std::string_view password) {
  std::string blob;
  blob.append(authzid);
  blob.push_back('\0');
  blob.append(authcid);
  blob.push_back('\0');
  blob.append(password);
  WXA_ASSIGN_OR_RETURN(ImapReply r, Command("AUTHENTICATE PLAIN " + Base64Encode(blob)));
  if (!r.ok()) {
    return Status::IOError("AUTHENTICATE PLAIN as " + std::string(authcid) + " for '" +
                           std::string(authzid) + "': " + r.status);
  }
  return Status::Ok();
}

Result<ImapReply> ImapTestClient::Append(std::string_view mailbox, std::string_view message,
                                         std::string_view flags, std::string_view date,
                                         LiteralMode mode) {
  std::string head = "APPEND " + ImapQuote(mailbox) + " ";
  if (!flags.empty()) head += "(" + std::string(flags) + ") ";
  if (!date.empty()) head += "\"" + std::string(date) + "\" ";
  return CommandParts({ImapPart{head, std::string(message)}, ImapPart{"", std::nullopt}}, mode);
}

Result<ImapReply> ImapTestClient::MultiAppend(std::string_view mailbox,
                                              const std::vector<std::string>& messages,
                                              std::string_view flags, LiteralMode mode) {
  std::vector<ImapPart> parts;
  std::string lead = "APPEND " + ImapQuote(mailbox) + " ";
  for (const auto& m : messages) {
    std::string text = lead;
    if (!flags.empty()) text += "(" + std::string(flags) + ") ";
    parts.push_back(ImapPart{text, m});
    lead = " ";
  }
  parts.push_back(ImapPart{"", std::nullopt});
  return CommandParts(parts, mode);
}

std::string ImapQuote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string Base64Encode(std::string_view data) {
  static const char* kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= data.size(); i += 3) {
    uint32_t v = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8) | uint8_t(data[i + 2]);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == data.size()) {
    uint32_t v = uint8_t(data[i]) << 16;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == data.size()) {
    uint32_t v = (uint8_t(data[i]) << 16) | (uint8_t(data[i + 1]) << 8);
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

std::optional<std::string> Base64Decode(std::string_view b64) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  bool padding = false;
  for (char c : b64) {
    int v;
    if (c >= 'A' && c <= 'Z') {
      v = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      v = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      v = c - '0' + 52;
    } else if (c == '+') {
      v = 62;
    } else if (c == '/') {
      v = 63;
    } else if (c == '=') {
      padding = true;
      continue;
    } else if (c == ' ' || c == '\r' || c == '\n' || c == '\t') {
      continue;
    } else {
      return std::nullopt;
    }
    if (padding) return std::nullopt;  // data after '='
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
    }
  }
  return out;
}

std::optional<int64_t> ParseImapDateTime(std::string_view s) {
  // "dd-Mon-yyyy hh:mm:ss +zzzz"; RFC 3501 date-day-fixed allows " 1".
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  static const char* kMonths[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                  "jul", "aug", "sep", "oct", "nov", "dec"};
  int day = 0, year = 0, hh = 0, mm = 0, ss = 0, zone = 0;
  char mon[4] = {0};
  char sign = '+';
  if (std::sscanf(std::string(s).c_str(), "%d-%3c-%d %d:%d:%d %c%4d", &day, mon, &year, &hh, &mm,
                  &ss, &sign, &zone) != 8) {
    return std::nullopt;
  }
  int month = -1;
  for (int i = 0; i < 12; ++i) {
    if (StartsWithNoCase(kMonths[i], std::string_view(mon, 3))) month = i;
  }
  if (month < 0 || (sign != '+' && sign != '-')) return std::nullopt;
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month;
  tm.tm_mday = day;
  tm.tm_hour = hh;
  tm.tm_min = mm;
  tm.tm_sec = ss;
  int64_t t = ::timegm(&tm);
  int64_t offset = (zone / 100) * 3600 + (zone % 100) * 60;
  return sign == '+' ? t - offset : t + offset;
}

std::string FormatImapDateTime(int64_t unix_seconds) {
  time_t t = static_cast<time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday,
                kMonths[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

std::string HeaderValue(std::string_view message, std::string_view name) {
  size_t pos = 0;
  while (pos < message.size()) {
    size_t eol = message.find('\n', pos);
    if (eol == std::string_view::npos) eol = message.size();
    std::string_view line = message.substr(pos, eol - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) return "";  // end of the header section
    if (line.size() > name.size() && line[name.size()] == ':' && StartsWithNoCase(line, name)) {
      std::string value(line.substr(name.size() + 1));
      // Unfold continuation lines.
      size_t next = eol + 1;
      while (next < message.size() && (message[next] == ' ' || message[next] == '\t')) {
        size_t e2 = message.find('\n', next);
        if (e2 == std::string_view::npos) e2 = message.size();
        std::string_view cont = message.substr(next, e2 - next);
        if (!cont.empty() && cont.back() == '\r') cont.remove_suffix(1);
        value += cont;
        next = e2 + 1;
      }
      size_t b = value.find_first_not_of(" \t");
      size_t e = value.find_last_not_of(" \t");
      return b == std::string::npos ? "" : value.substr(b, e - b + 1);
    }
    pos = eol + 1;
  }
  return "";
}

std::vector<std::string> SplitWords(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    size_t j = i;
    while (j < s.size() && s[j] != ' ') ++j;
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j;
  }
  return out;
}

bool CapabilityMatches(std::string_view cap, std::string_view pattern) {
  auto equal = [](std::string_view a, std::string_view b) {
    return a.size() == b.size() && StartsWithNoCase(a, b);
  };
  if (equal(cap, pattern)) return true;
  if (pattern.find('=') != std::string_view::npos) return false;
  size_t eq = cap.find('=');
  return eq != std::string_view::npos && equal(cap.substr(0, eq), pattern);
}

}  // namespace wxa::test
