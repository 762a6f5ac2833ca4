#include "engine/sinks/imap/imap_protocol.h"

#include <openssl/evp.h>

#include <cctype>
#include <charconv>
#include <ctime>

#include <fmt/format.h>

#include "formats/maildir/maildir_writer.h"

namespace wxa::sinks::imap {

namespace {

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

bool IsDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

template <typename T>
std::optional<T> Number(std::string_view s) {
  T v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// Splits off the next space-separated token.
std::string_view Token(std::string_view* rest) {
  while (!rest->empty() && rest->front() == ' ') rest->remove_prefix(1);
  size_t sp = rest->find(' ');
  std::string_view t = rest->substr(0, sp);
  rest->remove_prefix(sp == std::string_view::npos ? rest->size() : sp);
  while (!rest->empty() && rest->front() == ' ') rest->remove_prefix(1);
  return t;
}

// "[CODE args] text" -> code and text.
void CodeAndText(std::string_view rest, Response* r) {
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    if (close != std::string_view::npos) {
      r->code = std::string(rest.substr(1, close - 1));
      rest.remove_prefix(close + 1);
      while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    }
  }
  r->text = std::string(rest);
}

bool IsStatus(std::string_view s) {
  return s == "OK" || s == "NO" || s == "BAD" || s == "BYE" || s == "PREAUTH";
}

// Reads an astring / nstring at the start of *s: quoted, literal ({n}\r\n
// then n bytes, as the reader splices them) or atom. nullopt for NIL.
std::optional<std::string> ReadString(std::string_view* s, bool* ok) {
  while (!s->empty() && s->front() == ' ') s->remove_prefix(1);
  *ok = true;
  if (s->empty()) {
    *ok = false;
    return std::nullopt;
  }
  if (s->front() == '"') {
    std::string out;
    size_t i = 1;
    for (; i < s->size(); ++i) {
      char c = (*s)[i];
      if (c == '\\' && i + 1 < s->size()) {
        out.push_back((*s)[++i]);
      } else if (c == '"') {
        break;
      } else {
        out.push_back(c);
      }
    }
    if (i >= s->size()) {
      *ok = false;
      return std::nullopt;
    }
    s->remove_prefix(i + 1);
    return out;
  }
  if (s->front() == '{') {
    size_t close = s->find('}');
    if (close == std::string_view::npos) {
      *ok = false;
      return std::nullopt;
    }
    std::string_view num = s->substr(1, close - 1);
    if (!num.empty() && num.back() == '+') num.remove_suffix(1);
    auto n = Number<uint64_t>(num);
    if (!n || s->substr(close + 1, 2) != "\r\n" || s->size() < close + 3 + *n) {
      *ok = false;
      return std::nullopt;
    }
    std::string out(s->substr(close + 3, *n));
    s->remove_prefix(close + 3 + *n);
    return out;
  }
  size_t end = 0;
  while (end < s->size() && (*s)[end] != ' ' && (*s)[end] != ')') ++end;
  std::string_view atom = s->substr(0, end);
  s->remove_prefix(end);
  if (Upper(atom) == "NIL") return std::nullopt;
  return std::string(atom);
}

}  // namespace

Response ParseResponse(std::string_view line) {
  Response r;
  r.line = std::string(line);
  if (line.empty()) return r;
  if (line.front() == '+') {
    r.kind = Response::Kind::kContinuation;
    std::string_view rest = line.substr(1);
    if (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    r.text = std::string(rest);
    return r;
  }
  std::string_view rest = line;
  std::string_view first = Token(&rest);
  if (first == "*") {
    r.kind = Response::Kind::kUntagged;
    std::string_view word = Token(&rest);
    if (IsDigits(word)) {
      r.number = Number<uint64_t>(word).value_or(0);
      word = Token(&rest);
    }
    r.status = Upper(word);
    if (IsStatus(r.status)) {
      CodeAndText(rest, &r);
    } else {
      r.text = std::string(rest);
    }
    return r;
  }
  r.kind = Response::Kind::kTagged;
  r.tag = std::string(first);
  r.status = Upper(Token(&rest));
  CodeAndText(rest, &r);
  return r;
}

std::optional<uint64_t> TrailingLiteral(std::string_view line) {
  if (line.size() < 3 || line.back() != '}') return std::nullopt;
  size_t open = line.rfind('{');
  if (open == std::string_view::npos) return std::nullopt;
  std::string_view num = line.substr(open + 1, line.size() - open - 2);
  if (!num.empty() && num.back() == '+') num.remove_suffix(1);
  if (!IsDigits(num)) return std::nullopt;
  return Number<uint64_t>(num);
}

std::set<std::string> ParseCapabilities(std::string_view atoms) {
  std::set<std::string> out;
  std::string_view rest = atoms;
  if (Upper(rest.substr(0, 10)) == "CAPABILITY") rest.remove_prefix(10);
  while (!rest.empty()) {
    std::string_view t = Token(&rest);
    if (!t.empty()) out.insert(Upper(t));
  }
  return out;
}

std::optional<AppendUid> ParseAppendUid(std::string_view code) {
  std::string_view rest = code;
  if (Upper(Token(&rest)) != "APPENDUID") return std::nullopt;
  auto validity = Number<uint32_t>(Token(&rest));
  std::string_view set = Token(&rest);
  if (!validity || set.empty()) return std::nullopt;
  AppendUid out;
  out.uidvalidity = *validity;
  while (!set.empty()) {
    size_t comma = set.find(',');
    std::string_view part = set.substr(0, comma);
    set.remove_prefix(comma == std::string_view::npos ? set.size() : comma + 1);
    size_t colon = part.find(':');
    auto a = Number<uint32_t>(part.substr(0, colon));
    if (!a) return std::nullopt;
    uint32_t b = *a;
    if (colon != std::string_view::npos) {
      auto bb = Number<uint32_t>(part.substr(colon + 1));
      if (!bb) return std::nullopt;
      b = *bb;
    }
    // A uid-set may list a range high:low; the order is ascending either way,
    // and APPENDUID assigns them in message order (RFC 4315 section 3).
    if (b < *a) std::swap(*a, b);
    if (b - *a > 100000) return std::nullopt;  // nothing we sent is that big
    for (uint32_t u = *a;; ++u) {
      out.uids.push_back(u);
      if (u == b) break;
    }
  }
  return out;
}

std::optional<uint32_t> ParseUidValidity(std::string_view code) {
  std::string_view rest = code;
  if (Upper(Token(&rest)) != "UIDVALIDITY") return std::nullopt;
  return Number<uint32_t>(Token(&rest));
}

std::vector<uint32_t> ParseSearch(std::string_view line) {
  std::vector<uint32_t> out;
  std::string_view rest = line;
  if (Token(&rest) != "*") return out;
  if (Upper(Token(&rest)) != "SEARCH") return out;
  while (!rest.empty()) {
    std::string_view t = Token(&rest);
    if (t.front() == '(') break;  // (MODSEQ ...) of CONDSTORE
    if (auto n = Number<uint32_t>(t)) out.push_back(*n);
  }
  return out;
}

std::optional<ListEntry> ParseList(std::string_view line) {
  std::string_view rest = line;
  if (Token(&rest) != "*") return std::nullopt;
  std::string kw = Upper(Token(&rest));
  if (kw != "LIST" && kw != "LSUB") return std::nullopt;
  ListEntry e;
  if (rest.empty() || rest.front() != '(') return std::nullopt;
  size_t close = rest.find(')');
  if (close == std::string_view::npos) return std::nullopt;
  std::string_view flags = rest.substr(1, close - 1);
  while (!flags.empty()) {
    std::string_view f = Token(&flags);
    if (!f.empty()) e.flags.emplace_back(f);
  }
  rest.remove_prefix(close + 1);
  bool ok = false;
  auto delim = ReadString(&rest, &ok);
  if (!ok) return std::nullopt;
  e.delimiter = delim.value_or("");
  auto name = ReadString(&rest, &ok);
  if (!ok || !name) return std::nullopt;
  e.name = *name;
  return e;
}

std::optional<std::string> Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u == '\r' || u == '\n' || u == 0 || u >= 0x80) return std::nullopt;
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string InternalDate(int64_t msgtime_ms) {
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  time_t t = static_cast<time_t>(msgtime_ms > 0 ? msgtime_ms / 1000 : 0);
  struct tm tm {};
  gmtime_r(&t, &tm);
  return fmt::format("{:02}-{}-{:04} {:02}:{:02}:{:02} +0000", tm.tm_mday, kMonths[tm.tm_mon],
                     tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::optional<std::chrono::milliseconds> SuggestedBackoff(std::string_view text) {
  static constexpr std::string_view kKey = "Suggested Backoff Time:";
  size_t at = text.find(kKey);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = text.substr(at + kKey.size());
  std::string_view num = Token(&rest);
  auto n = Number<uint64_t>(num);
  if (!n) return std::nullopt;
  return std::chrono::milliseconds(*n);
}

bool IsTemporary(const Response& r) {
  if (r.status == "BYE") return true;
  std::string code = Upper(r.code.substr(0, r.code.find(' ')));
  if (code == "UNAVAILABLE" || code == "THROTTLED" || code == "INUSE") return true;
  if (SuggestedBackoff(r.text)) return true;
  std::string t = Upper(r.text);
  return t.find("THROTTLED") != std::string::npos || t.find("TRY AGAIN") != std::string::npos;
}

std::string Base64(std::string_view data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(data.data()), static_cast<int>(data.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::optional<std::string> Base64Decode(std::string_view b64) {
  if (b64.size() % 4 != 0) return std::nullopt;
  std::string out(b64.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(b64.data()), static_cast<int>(b64.size()));
  if (n < 0) return std::nullopt;
  size_t pad = 0;
  if (!b64.empty() && b64.back() == '=') ++pad;
  if (b64.size() > 1 && b64[b64.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string SaslPlain(std::string_view authzid, std::string_view authcid, std::string_view password) {
  std::string msg;
  msg.append(authzid).push_back('\0');
  msg.append(authcid).push_back('\0');
  msg.append(password);
  return Base64(msg);
}

std::string SaslXoauth2(std::string_view user, std::string_view token) {
  return Base64(fmt::format("user={}\x01" "auth=Bearer {}\x01\x01", user, token));
}

std::string MailboxName(const std::vector<std::string>& levels, std::string_view delimiter) {
  std::string out;
  for (size_t i = 0; i < levels.size(); ++i) {
    if (i > 0) out.append(delimiter);
    out += maildir::EncodeModifiedUtf7(levels[i]);
  }
  return out;
}

}  // namespace wxa::sinks::imap
