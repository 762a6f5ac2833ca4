#include "tests/graph/graph_codec.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include <array>
#include <cctype>
#include <cstring>
#include <ctime>
#include <memory>

#include <simdjson.h>

namespace wxa::test::graph_codec {
namespace {

constexpr char kStd[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
constexpr char kUrl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string EncodeWith(std::string_view in, const char* alphabet, bool pad) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out.push_back(alphabet[v >> 18]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(alphabet[(v >> 6) & 63]);
    out.push_back(alphabet[v & 63]);
  }
  size_t rest = in.size() - i;
  if (rest > 0) {
    uint32_t v = uint8_t(in[i]) << 16;
    if (rest == 2) v |= uint8_t(in[i + 1]) << 8;
    out.push_back(alphabet[v >> 18]);
    out.push_back(alphabet[(v >> 12) & 63]);
    if (rest == 2) out.push_back(alphabet[(v >> 6) & 63]);
    if (pad) out.append(rest == 1 ? "==" : "=");
  }
  return out;
}

int DecodeChar(char c, bool url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (!url && c == '+') return 62;
  if (!url && c == '/') return 63;
  if (url && c == '-') return 62;
  if (url && c == '_') return 63;
  return -1;
}

std::optional<std::string> DecodeWith(std::string_view text, bool url, bool skip_space) {
  std::string out;
  out.reserve(text.size() / 4 * 3 + 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t pads = 0;
  for (char c : text) {
    if (skip_space && (c == '\r' || c == '\n' || c == ' ' || c == '\t')) continue;
    if (c == '=') {
      ++pads;
      continue;
    }
    if (pads > 0) return std::nullopt;  // data after padding
    int v = DecodeChar(c, url);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(char((acc >> bits) & 0xFF));
    }
  }
  if (pads > 2) return std::nullopt;
  // 6 leftover bits can never come from whole bytes.
  if (bits >= 6) return std::nullopt;
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Parses a quoted OData literal starting at s[*pos] == '\''. On success *pos
// points past the closing quote.
std::optional<std::string> ParseODataString(std::string_view s, size_t* pos) {
  if (*pos >= s.size() || s[*pos] != '\'') return std::nullopt;
  std::string out;
  size_t i = *pos + 1;
  while (i < s.size()) {
    if (s[i] == '\'') {
      if (i + 1 < s.size() && s[i + 1] == '\'') {
        out.push_back('\'');
        i += 2;
        continue;
      }
      *pos = i + 1;
      return out;
    }
    out.push_back(s[i++]);
  }
  return std::nullopt;
}

void SkipSpaces(std::string_view s, size_t* pos) {
  while (*pos < s.size() && (s[*pos] == ' ' || s[*pos] == '\t')) ++*pos;
}

bool ConsumeWord(std::string_view s, size_t* pos, std::string_view word) {
  SkipSpaces(s, pos);
  if (s.size() - *pos < word.size()) return false;
  if (!IEquals(s.substr(*pos, word.size()), word)) return false;
  *pos += word.size();
  return true;
}

std::string ReadIdentifier(std::string_view s, size_t* pos) {
  SkipSpaces(s, pos);
  size_t start = *pos;
  while (*pos < s.size() && (std::isalnum(static_cast<unsigned char>(s[*pos])) || s[*pos] == '_' ||
                             s[*pos] == '/')) {
    ++*pos;
  }
  return std::string(s.substr(start, *pos - start));
}

// ---- dates ----
int MonthIndex(std::string_view m) {
  static constexpr std::array<const char*, 12> kMonths = {"jan", "feb", "mar", "apr", "may", "jun",
                                                          "jul", "aug", "sep", "oct", "nov", "dec"};
  for (size_t i = 0; i < kMonths.size(); ++i) {
    if (IEquals(m, kMonths[i])) return int(i);
  }
  return -1;
}

std::optional<int64_t> CivilToEpoch(int year, int month0, int day, int h, int m, int s) {
  if (month0 < 0 || month0 > 11 || day < 1 || day > 31 || h < 0 || h > 23 || m < 0 || m > 59 ||
      s < 0 || s > 60) {
    return std::nullopt;
  }
  struct tm t = {};
  t.tm_year = year - 1900;
  t.tm_mon = month0;
  t.tm_mday = day;
  t.tm_hour = h;
  t.tm_min = m;
  t.tm_sec = s;
  return int64_t(timegm(&t));
}

// Reads digits; returns the count read.
int ReadInt(std::string_view s, size_t* pos, int max_digits, int* value) {
  int n = 0;
  *value = 0;
  while (*pos < s.size() && n < max_digits && std::isdigit(static_cast<unsigned char>(s[*pos]))) {
    *value = *value * 10 + (s[*pos] - '0');
    ++*pos;
    ++n;
  }
  return n;
}

// ---- OpenSSL RAII (STYLE rule 2: raw cleanup only inside wrappers) ----
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

PkeyPtr LoadPublicKey(std::string_view pem) {
  BioPtr bio(BIO_new_mem_buf(pem.data(), int(pem.size())));
  if (!bio) return nullptr;
  PkeyPtr key(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
  if (key) return key;
  // A certificate is what Entra stores for an app; accept it as well.
  BioPtr bio2(BIO_new_mem_buf(pem.data(), int(pem.size())));
  std::unique_ptr<X509, X509Free> cert(PEM_read_bio_X509(bio2.get(), nullptr, nullptr, nullptr));
  if (!cert) return nullptr;
  return PkeyPtr(X509_get_pubkey(cert.get()));
}

bool JsonString(simdjson::dom::element obj, const char* key, std::string* out) {
  std::string_view v;
  if (obj[key].get(v) != simdjson::SUCCESS) return false;
  *out = std::string(v);
  return true;
}

std::optional<int64_t> JsonInt(simdjson::dom::element obj, const char* key) {
  simdjson::dom::element e;
  if (obj[key].get(e) != simdjson::SUCCESS) return std::nullopt;
  int64_t i;
  if (e.get(i) == simdjson::SUCCESS) return i;
  uint64_t u;
  if (e.get(u) == simdjson::SUCCESS) return int64_t(u);
  double d;
  if (e.get(d) == simdjson::SUCCESS) return int64_t(d);
  return std::nullopt;
}

}  // namespace

// ---- base64 ----
std::string Base64Encode(std::string_view bytes) { return EncodeWith(bytes, kStd, true); }
std::string Base64UrlEncode(std::string_view bytes, bool pad) { return EncodeWith(bytes, kUrl, pad); }
std::optional<std::string> Base64Decode(std::string_view text) { return DecodeWith(text, false, true); }
std::optional<std::string> Base64UrlDecode(std::string_view text) {
  return DecodeWith(text, true, false);
}

// ---- URLs ----
std::optional<std::string> PercentDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = HexValue(s[i + 1]), lo = HexValue(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(char(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::optional<std::map<std::string, std::string>> ParseQuery(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (part.empty()) continue;
    size_t eq = part.find('=');
    auto key = PercentDecode(part.substr(0, eq), true);
    auto value = PercentDecode(eq == std::string_view::npos ? "" : part.substr(eq + 1), true);
    if (!key || !value) return std::nullopt;
    out.emplace(std::move(*key), std::move(*value));
  }
  return out;
}

// ---- OData ----
std::optional<EqFilter> ParseEqFilter(std::string_view filter) {
  size_t pos = 0;
  EqFilter f;
  f.property = ReadIdentifier(filter, &pos);
  if (f.property.empty()) return std::nullopt;
  SkipSpaces(filter, &pos);
  if (!ConsumeWord(filter, &pos, "eq")) return std::nullopt;
  SkipSpaces(filter, &pos);
  auto v = ParseODataString(filter, &pos);
  if (!v) return std::nullopt;
  SkipSpaces(filter, &pos);
  if (pos != filter.size()) return std::nullopt;
  f.value = std::move(*v);
  return f;
}

std::optional<ExtendedPropertyFilter> ParseExtendedPropertyFilter(std::string_view filter) {
  size_t pos = 0;
  if (!ConsumeWord(filter, &pos, "singleValueExtendedProperties/Any(")) return std::nullopt;
  std::string var = ReadIdentifier(filter, &pos);
  if (var.empty() || !ConsumeWord(filter, &pos, ":")) return std::nullopt;
  ExtendedPropertyFilter out;
  bool have_id = false, have_value = false;
  for (int clause = 0; clause < 2; ++clause) {
    if (clause == 1 && !ConsumeWord(filter, &pos, "and")) return std::nullopt;
    std::string lhs = ReadIdentifier(filter, &pos);
    if (!ConsumeWord(filter, &pos, "eq")) return std::nullopt;
    SkipSpaces(filter, &pos);
    auto lit = ParseODataString(filter, &pos);
    if (!lit) return std::nullopt;
    if (IEquals(lhs, var + "/id")) {
      out.id = std::move(*lit);
      have_id = true;
    } else if (IEquals(lhs, var + "/value")) {
      out.value = std::move(*lit);
      have_value = true;
    } else {
      return std::nullopt;
    }
  }
  if (!have_id || !have_value || !ConsumeWord(filter, &pos, ")")) return std::nullopt;
  SkipSpaces(filter, &pos);
  if (pos != filter.size()) return std::nullopt;
  return out;
}

std::optional<std::string> ExpandedExtendedPropertyFilter(std::string_view expand) {
  constexpr std::string_view kName = "singleValueExtendedProperties";
  size_t at = Lower(expand).find(Lower(kName));
  if (at == std::string::npos) return std::nullopt;
  std::string_view rest = expand.substr(at + kName.size());
  size_t pos = 0;
  SkipSpaces(rest, &pos);
  if (pos >= rest.size() || rest[pos] != '(') return std::string();
  ++pos;
  if (!ConsumeWord(rest, &pos, "$filter")) return std::string();
  if (!ConsumeWord(rest, &pos, "=")) return std::string();
  // The filter runs to the matching ')' outside quotes.
  size_t start = pos;
  bool in_quote = false;
  for (; pos < rest.size(); ++pos) {
    if (rest[pos] == '\'') in_quote = !in_quote;
    if (rest[pos] == ')' && !in_quote) break;
  }
  return std::string(TrimView(rest.substr(start, pos - start)));
}

// ---- RFC 5322 ----
std::vector<MimeHeader> ParseMimeHeaders(std::string_view mime, size_t* body_offset) {
  std::vector<MimeHeader> out;
  size_t pos = 0;
  *body_offset = mime.size();
  while (pos < mime.size()) {
    size_t eol = mime.find('\n', pos);
    size_t next = eol == std::string_view::npos ? mime.size() : eol + 1;
    std::string_view line = mime.substr(pos, (eol == std::string_view::npos ? mime.size() : eol) - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {
      *body_offset = next;
      break;
    }
    if ((line[0] == ' ' || line[0] == '\t') && !out.empty()) {
      // Folded continuation: unfolding removes only the line break.
      out.back().value.append(line);
    } else {
      size_t colon = line.find(':');
      if (colon != std::string_view::npos && colon > 0) {
        out.push_back({std::string(TrimView(line.substr(0, colon))), std::string(line.substr(colon + 1))});
      }
      // A line without a colon is not a header; RFC 5322 parsers skip it.
    }
    pos = next;
  }
  for (auto& h : out) h.value = std::string(TrimView(h.value));
  return out;
}

const MimeHeader* FindHeader(const std::vector<MimeHeader>& headers, std::string_view name) {
  for (const auto& h : headers) {
    if (IEquals(h.name, name)) return &h;
  }
  return nullptr;
}

std::string DecodeEncodedWords(std::string_view value) {
  std::string out;
  size_t pos = 0;
  bool last_was_word = false;
  std::string pending_space;
  while (pos < value.size()) {
    size_t start = value.find("=?", pos);
    if (start == std::string_view::npos) {
      out.append(pending_space);
      out.append(value.substr(pos));
      break;
    }
    std::string_view between = value.substr(pos, start - pos);
    // Parse =?charset?enc?text?=
    size_t q1 = value.find('?', start + 2);
    size_t q2 = q1 == std::string_view::npos ? q1 : value.find('?', q1 + 1);
    size_t end = q2 == std::string_view::npos ? q2 : value.find("?=", q2 + 1);
    if (end == std::string_view::npos) {
      out.append(pending_space);
      out.append(value.substr(pos));
      break;
    }
    std::string charset = Lower(value.substr(start + 2, q1 - start - 2));
    if (size_t star = charset.find('*'); star != std::string::npos) charset.resize(star);  // RFC 2231 language
    char enc = char(std::tolower(static_cast<unsigned char>(value[q1 + 1])));
    std::string_view text = value.substr(q2 + 1, end - q2 - 1);
    std::optional<std::string> decoded;
    if ((charset == "utf-8" || charset == "us-ascii") && q2 == q1 + 2) {
      if (enc == 'b') {
        decoded = Base64Decode(text);
      } else if (enc == 'q') {
        std::string d;
        bool ok = true;
        for (size_t i = 0; i < text.size(); ++i) {
          if (text[i] == '_') {
            d.push_back(' ');
          } else if (text[i] == '=') {
            int hi = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
            int lo = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
            if (hi < 0 || lo < 0) {
              ok = false;
              break;
            }
            d.push_back(char(hi * 16 + lo));
            i += 2;
          } else {
            d.push_back(text[i]);
          }
        }
        if (ok) decoded = std::move(d);
      }
    }
    bool between_is_space = TrimView(between).empty();
    if (!(last_was_word && between_is_space)) {
      out.append(pending_space);
      out.append(between);
    }
    pending_space.clear();
    if (decoded) {
      out.append(*decoded);
      last_was_word = true;
    } else {
      out.append(value.substr(start, end + 2 - start));
      last_was_word = false;
    }
    pos = end + 2;
  }
  return out;
}

std::optional<int64_t> ParseRfc5322Date(std::string_view v) {
  // Drop comments, which obsolete syntax allows almost anywhere.
  std::string s;
  int depth = 0;
  for (char c : v) {
    if (c == '(') ++depth;
    if (depth == 0) s.push_back(c);
    if (c == ')' && depth > 0) --depth;
  }
  size_t pos = 0;
  SkipSpaces(s, &pos);
  // Optional day-of-week.
  if (pos + 3 <= s.size() && std::isalpha(static_cast<unsigned char>(s[pos]))) {
    size_t comma = s.find(',', pos);
    if (comma == std::string::npos) return std::nullopt;
    pos = comma + 1;
  }
  SkipSpaces(s, &pos);
  int day = 0;
  if (ReadInt(s, &pos, 2, &day) == 0) return std::nullopt;
  SkipSpaces(s, &pos);
  if (pos + 3 > s.size()) return std::nullopt;
  int month = MonthIndex(std::string_view(s).substr(pos, 3));
  if (month < 0) return std::nullopt;
  pos += 3;
  SkipSpaces(s, &pos);
  int year = 0;
  int ydigits = ReadInt(s, &pos, 4, &year);
  if (ydigits < 2) return std::nullopt;
  if (ydigits == 2) year += year < 50 ? 2000 : 1900;
  if (ydigits == 3) year += 1900;
  SkipSpaces(s, &pos);
  int h = 0, m = 0, sec = 0;
  if (ReadInt(s, &pos, 2, &h) == 0) return std::nullopt;
  SkipSpaces(s, &pos);
  if (pos >= s.size() || s[pos] != ':') return std::nullopt;
  ++pos;
  SkipSpaces(s, &pos);
  if (ReadInt(s, &pos, 2, &m) == 0) return std::nullopt;
  SkipSpaces(s, &pos);
  if (pos < s.size() && s[pos] == ':') {
    ++pos;
    SkipSpaces(s, &pos);
    if (ReadInt(s, &pos, 2, &sec) == 0) return std::nullopt;
  }
  SkipSpaces(s, &pos);
  int offset_min = 0;
  if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
    int sign = s[pos] == '-' ? -1 : 1;
    ++pos;
    int hhmm = 0;
    if (ReadInt(s, &pos, 4, &hhmm) != 4) return std::nullopt;
    offset_min = sign * ((hhmm / 100) * 60 + hhmm % 100);
  } else if (pos < s.size()) {
    std::string zone = Lower(TrimView(std::string_view(s).substr(pos)));
    static const std::map<std::string, int> kZones = {
        {"ut", 0},     {"gmt", 0},    {"z", 0},      {"est", -300}, {"edt", -240},
        {"cst", -360}, {"cdt", -300}, {"mst", -420}, {"mdt", -360}, {"pst", -480},
        {"pdt", -420}};
    auto it = kZones.find(zone);
    // RFC 5322 4.3: other (military) zones are treated as -0000, i.e. UTC.
    offset_min = it == kZones.end() ? 0 : it->second;
  }
  auto t = CivilToEpoch(year, month, day, h, m, sec);
  if (!t) return std::nullopt;
  return *t - int64_t(offset_min) * 60;
}

Mailbox ParseMailbox(std::string_view value) {
  auto list = ParseMailboxList(value);
  return list.empty() ? Mailbox{} : list.front();
}

std::vector<Mailbox> ParseMailboxList(std::string_view value) {
  std::vector<Mailbox> out;
  std::string decoded = DecodeEncodedWords(value);
  std::string_view v = decoded;
  size_t start = 0;
  bool in_quote = false, in_angle = false;
  auto flush = [&](std::string_view part) {
    part = TrimView(part);
    if (part.empty()) return;
    Mailbox mb;
    size_t lt = part.rfind('<');
    size_t gt = part.rfind('>');
    if (lt != std::string_view::npos && gt != std::string_view::npos && gt > lt) {
      mb.address = std::string(TrimView(part.substr(lt + 1, gt - lt - 1)));
      std::string_view name = TrimView(part.substr(0, lt));
      if (name.size() >= 2 && name.front() == '"' && name.back() == '"') {
        name = name.substr(1, name.size() - 2);
      }
      for (size_t i = 0; i < name.size(); ++i) {
        if (name[i] == '\\' && i + 1 < name.size()) ++i;
        mb.name.push_back(name[i]);
      }
    } else {
      mb.address = std::string(part);
    }
    out.push_back(std::move(mb));
  };
  for (size_t i = 0; i < v.size(); ++i) {
    char c = v[i];
    if (c == '\\' && in_quote) {
      ++i;
      continue;
    }
    if (c == '"') in_quote = !in_quote;
    if (!in_quote && c == '<') in_angle = true;
    if (!in_quote && c == '>') in_angle = false;
    if (c == ',' && !in_quote && !in_angle) {
      flush(v.substr(start, i - start));
      start = i + 1;
    }
  }
  flush(v.substr(start));
  return out;
}

// ---- ISO 8601 ----
std::string FormatIso8601(int64_t epoch_seconds) {
  time_t t = time_t(epoch_seconds);
  struct tm tm = {};
  gmtime_r(&t, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::optional<int64_t> ParseIso8601(std::string_view text) {
  text = TrimView(text);
  size_t pos = 0;
  int y, mo, d, h, mi, s = 0;
  auto expect = [&](char c) {
    if (pos < text.size() && text[pos] == c) {
      ++pos;
      return true;
    }
    return false;
  };
  if (ReadInt(text, &pos, 4, &y) != 4 || !expect('-') || ReadInt(text, &pos, 2, &mo) != 2 ||
      !expect('-') || ReadInt(text, &pos, 2, &d) != 2) {
    return std::nullopt;
  }
  if (!expect('T') && !expect('t') && !expect(' ')) return std::nullopt;
  if (ReadInt(text, &pos, 2, &h) != 2 || !expect(':') || ReadInt(text, &pos, 2, &mi) != 2) {
    return std::nullopt;
  }
  if (expect(':') && ReadInt(text, &pos, 2, &s) != 2) return std::nullopt;
  if (expect('.')) {
    while (pos < text.size() && std::isdigit(static_cast<unsigned char>(text[pos]))) ++pos;
  }
  int offset_min = 0;
  if (pos < text.size()) {
    if (text[pos] == 'Z' || text[pos] == 'z') {
      ++pos;
    } else if (text[pos] == '+' || text[pos] == '-') {
      int sign = text[pos] == '-' ? -1 : 1;
      ++pos;
      int oh = 0, om = 0;
      if (ReadInt(text, &pos, 2, &oh) != 2) return std::nullopt;
      expect(':');
      if (ReadInt(text, &pos, 2, &om) != 2) return std::nullopt;
      offset_min = sign * (oh * 60 + om);
    }
  }
  if (pos != text.size()) return std::nullopt;
  auto t = CivilToEpoch(y, mo - 1, d, h, mi, s);
  if (!t) return std::nullopt;
  return *t - int64_t(offset_min) * 60;
}

// ---- JWT ----
JwtError VerifyJwt(std::string_view jwt, std::string_view public_key_pem, JwtClaims* claims) {
  size_t d1 = jwt.find('.');
  size_t d2 = d1 == std::string_view::npos ? d1 : jwt.find('.', d1 + 1);
  if (d2 == std::string_view::npos || jwt.find('.', d2 + 1) != std::string_view::npos) {
    return JwtError::kMalformed;
  }
  auto header = Base64UrlDecode(jwt.substr(0, d1));
  auto payload = Base64UrlDecode(jwt.substr(d1 + 1, d2 - d1 - 1));
  auto signature = Base64UrlDecode(jwt.substr(d2 + 1));
  if (!header || !payload || !signature) return JwtError::kMalformed;

  simdjson::dom::parser parser;
  simdjson::dom::element h;
  if (parser.parse(*header).get(h) != simdjson::SUCCESS || !h.is_object()) return JwtError::kMalformed;
  if (!JsonString(h, "alg", &claims->alg)) return JwtError::kMalformed;
  simdjson::dom::element p;
  if (parser.parse(*payload).get(p) != simdjson::SUCCESS || !p.is_object()) return JwtError::kMalformed;
  JsonString(p, "iss", &claims->iss);
  JsonString(p, "sub", &claims->sub);
  JsonString(p, "jti", &claims->jti);
  claims->exp = JsonInt(p, "exp");
  claims->nbf = JsonInt(p, "nbf");
  claims->aud.clear();
  simdjson::dom::element aud;
  if (p["aud"].get(aud) == simdjson::SUCCESS) {
    std::string_view one;
    simdjson::dom::array many;
    if (aud.get(one) == simdjson::SUCCESS) {
      claims->aud.emplace_back(one);
    } else if (aud.get(many) == simdjson::SUCCESS) {
      for (auto e : many) {
        if (e.get(one) == simdjson::SUCCESS) claims->aud.emplace_back(one);
      }
    }
  }

  bool pss = claims->alg == "PS256";
  if (claims->alg != "RS256" && !pss) return JwtError::kAlgorithm;
  PkeyPtr key = LoadPublicKey(public_key_pem);
  if (!key || EVP_PKEY_base_id(key.get()) != EVP_PKEY_RSA) return JwtError::kKey;

  std::unique_ptr<EVP_MD_CTX, MdCtxFree> ctx(EVP_MD_CTX_new());
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), &pctx, EVP_sha256(), nullptr, key.get()) != 1) {
    return JwtError::kKey;
  }
  if (pss) {
    // RFC 7518 3.5: PSS with MGF1-SHA256 and a salt as long as the hash.
    if (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1) {
      return JwtError::kKey;
    }
  }
  std::string_view signed_part = jwt.substr(0, d2);
  int ok = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature->data()),
                            signature->size(), reinterpret_cast<const unsigned char*>(signed_part.data()),
                            signed_part.size());
  return ok == 1 ? JwtError::kOk : JwtError::kSignature;
}

bool IsReadableRsaPublicKey(std::string_view pem) {
  PkeyPtr key = LoadPublicKey(pem);
  return key && EVP_PKEY_base_id(key.get()) == EVP_PKEY_RSA;
}

// ---- strings ----
bool IEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

bool IStartsWith(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && IEquals(s.substr(0, prefix.size()), prefix);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view TrimView(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string MediaType(std::string_view content_type) {
  return Lower(TrimView(content_type.substr(0, content_type.find(';'))));
}

}  // namespace wxa::test::graph_codec
