#include "formats/core/text.h"

#include <ctime>

#include <fmt/format.h>

namespace wxa::core {

std::string_view Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t' || s[b] == '\r' || s[b] == '\n')) ++b;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r' || s[e - 1] == '\n')) --e;
  return s.substr(b, e - b);
}

std::string AsciiLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

namespace {

// Length of the well-formed UTF-8 sequence at s[i], or 0 when ill-formed
// (Unicode Table 3-7).
size_t Utf8SeqLen(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  unsigned char c = p[i];
  if (c < 0x80) return 1;
  auto cont = [&](size_t k, unsigned char lo = 0x80, unsigned char hi = 0xBF) {
    return i + k < n && p[i + k] >= lo && p[i + k] <= hi;
  };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;
  if (c == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

// Decodes the code point of a well-formed sequence of length len at s[i].
uint32_t Utf8Decode(std::string_view s, size_t i, size_t len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  switch (len) {
    case 1: return p[0];
    case 2: return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3: return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) |
             (p[3] & 0x3Fu);
  }
}

bool IsControl(uint32_t cp) { return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp < 0xA0); }

}  // namespace

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    // Fast path over ASCII.
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len = Utf8SeqLen(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

size_t RepairUtf8(std::string_view in, std::string* out) {
  out->clear();
  out->reserve(in.size());
  size_t repaired = 0;
  for (size_t i = 0; i < in.size();) {
    size_t len = Utf8SeqLen(in, i);
    if (len == 0) {
      out->append("\xEF\xBF\xBD");
      ++repaired;
      ++i;
    } else {
      out->append(in.substr(i, len));
      i += len;
    }
  }
  return repaired;
}

std::string StripControls(std::string_view s, bool keep_newlines) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len = Utf8SeqLen(s, i);
    if (len == 0) {  // not expected (input is valid UTF-8); drop the byte
      ++i;
      continue;
    }
    uint32_t cp = Utf8Decode(s, i, len);
    if (keep_newlines && cp == '\r') {
      out.push_back('\n');
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else if (keep_newlines && (cp == '\n' || cp == '\t')) {
      out.push_back(static_cast<char>(cp));
    } else if (!IsControl(cp)) {
      out.append(s.substr(i, len));
    }
    i += len;
  }
  return out;
}

std::string OneLine(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  bool pending_space = false;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {  // ASCII: no decoding needed
      if (c <= ' ' || c == 0x7F) {
        pending_space = !out.empty();
      } else {
        if (pending_space) out.push_back(' ');
        pending_space = false;
        out.push_back(static_cast<char>(c));
      }
      ++i;
      continue;
    }
    size_t len = Utf8SeqLen(s, i);
    if (len == 0) {
      ++i;
      continue;
    }
    uint32_t cp = Utf8Decode(s, i, len);
    if (IsControl(cp) || cp == 0x2028 || cp == 0x2029) {
      pending_space = !out.empty();
    } else {
      if (pending_space) out.push_back(' ');
      pending_space = false;
      out.append(s.substr(i, len));
    }
    i += len;
  }
  return out;
}

std::string TruncateUtf8(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return std::string(s);
  static constexpr std::string_view kEllipsis = "\xE2\x80\xA6";
  if (max_bytes < kEllipsis.size()) return std::string();
  size_t limit = max_bytes - kEllipsis.size();
  size_t i = 0;
  while (i < s.size()) {
    size_t len = Utf8SeqLen(s, i);
    if (len == 0) len = 1;
    if (i + len > limit) break;
    i += len;
  }
  std::string out(s.substr(0, i));
  out.append(kEllipsis);
  return out;
}

std::string SanitizeFileName(std::string_view name, std::string_view fallback) {
  std::string repaired;
  RepairUtf8(name, &repaired);
  std::string out;
  for (size_t i = 0; i < repaired.size();) {
    size_t len = Utf8SeqLen(repaired, i);
    uint32_t cp = Utf8Decode(repaired, i, len);
    if (cp == '/' || cp == '\\') {
      out.push_back('_');
    } else if (IsControl(cp)) {
      // dropped
    } else if (cp == '"' || cp == ':' || cp == '*' || cp == '?' || cp == '<' || cp == '>' ||
               cp == '|') {
      out.push_back('_');  // Windows-reserved: Outlook users save these attachments
    } else {
      out.append(repaired.substr(i, len));
    }
    i += len;
  }
  // No leading dots or spaces (no "..", no hidden files), no trailing dots or spaces.
  size_t b = 0;
  while (b < out.size() && (out[b] == '.' || out[b] == ' ')) ++b;
  size_t e = out.size();
  while (e > b && (out[e - 1] == '.' || out[e - 1] == ' ')) --e;
  out = out.substr(b, e - b);
  if (out.size() > 180) {
    // Keep the extension when cutting.
    size_t dot = out.rfind('.');
    std::string ext = (dot != std::string::npos && out.size() - dot <= 16) ? out.substr(dot) : "";
    out = TruncateUtf8(out.substr(0, out.size() - ext.size()), 180 - ext.size()) + ext;
  }
  if (out.empty()) return std::string(fallback);
  return out;
}

std::string HtmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 8);
  for (char c : s) {
    switch (c) {
      case '&': out.append("&amp;"); break;
      case '<': out.append("&lt;"); break;
      case '>': out.append("&gt;"); break;
      case '"': out.append("&quot;"); break;
      default: out.push_back(c);
    }
  }
  return out;
}

namespace {
// 0001-01-01 00:00:00 and 9999-12-31 23:59:59 UTC, in seconds since 1970.
constexpr int64_t kFirstSecond = -62135596800LL;
constexpr int64_t kLastSecond = 253402300799LL;
}  // namespace

std::string FormatUtcSeconds(int64_t s) {
  if (s < kFirstSecond || s > kLastSecond) return fmt::format("{} s since 1970 (out of range)", s);
  return FormatUtcMillis(s * 1000);  // within +-2.6e14: no overflow
}

std::string FormatUtcMillis(int64_t ms) {
  const int64_t s = ms >= 0 ? ms / 1000 : -((-(ms + 1)) / 1000) - 1;  // floor, without overflow at INT64_MIN
  if (s < kFirstSecond || s > kLastSecond) return fmt::format("{} ms since 1970 (out of range)", ms);
  time_t secs = static_cast<time_t>(s);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

std::string FormatDuration(int64_t seconds) {
  if (seconds < 0) seconds = 0;
  int64_t h = seconds / 3600, m = (seconds / 60) % 60, s = seconds % 60;
  if (h > 0) return fmt::format("{}:{:02}:{:02}", h, m, s);
  return fmt::format("{}:{:02}", m, s);
}

bool AllDigits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace wxa::core
