#include "formats/wecom/parser.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <optional>
#include <unordered_map>

#include <fmt/format.h>
#include <simdjson.h>

#include "formats/core/hash.h"
#include "formats/core/text.h"

namespace wxa::wecom {

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

// ---------------------------------------------------------------------------
// Lenient accessors: the real format, and re-serialisations of it, give
// numbers as strings, ids beyond int64, and arrays as comma-separated text.

std::optional<element> Get(element e, std::string_view key) {
  if (e.type() != element_type::OBJECT) return std::nullopt;
  element v;
  simdjson::dom::object obj;
  if (e.get_object().get(obj) != simdjson::SUCCESS) return std::nullopt;
  if (obj.at_key(key).get(v) != simdjson::SUCCESS) return std::nullopt;
  if (v.type() == element_type::NULL_VALUE) return std::nullopt;
  return v;
}

// The elements of an array value (empty for anything else). Named locals
// keep simdjson's result temporaries out of range-for statements.
std::vector<element> Elements(element e) {
  std::vector<element> out;
  simdjson::dom::array arr;
  if (e.get_array().get(arr) != simdjson::SUCCESS) return out;
  for (element x : arr) out.push_back(x);
  return out;
}

std::string FormatDouble(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
    return fmt::format("{}", static_cast<int64_t>(d));
  }
  return fmt::format("{}", d);
}

// Any scalar as text; objects and arrays as compact JSON.
std::string AsText(element v) {
  switch (v.type()) {
    case element_type::STRING: return std::string(v.get_string().value());
    case element_type::INT64: return fmt::format("{}", v.get_int64().value());
    case element_type::UINT64: return fmt::format("{}", v.get_uint64().value());
    case element_type::DOUBLE: return FormatDouble(v.get_double().value());
    case element_type::BOOL: return v.get_bool().value() ? "true" : "false";
    case element_type::NULL_VALUE: return "";
    default: return simdjson::minify(v);
  }
}

std::string Text(element obj, std::string_view key) {
  auto v = Get(obj, key);
  return v ? AsText(*v) : std::string();
}

// The first of several spellings a field is seen under in real exports.
std::string TextAny(element obj, std::initializer_list<std::string_view> keys) {
  for (auto k : keys) {
    if (auto v = Get(obj, k)) return AsText(*v);
  }
  return {};
}

std::optional<uint64_t> AsU64(element v) {
  switch (v.type()) {
    case element_type::UINT64: return v.get_uint64().value();
    case element_type::INT64: {
      int64_t i = v.get_int64().value();
      return i >= 0 ? std::optional<uint64_t>(static_cast<uint64_t>(i)) : std::nullopt;
    }
    case element_type::DOUBLE: {
      double d = v.get_double().value();
      return (std::isfinite(d) && d >= 0 && d < 1.8e19) ? std::optional<uint64_t>(d)
                                                         : std::nullopt;
    }
    case element_type::STRING: {
      std::string_view s = core::Trim(v.get_string().value());
      if (s.size() > 2 && s.substr(s.size() - 2) == ".0") s.remove_suffix(2);
      if (!core::AllDigits(s) || s.size() > 20) return std::nullopt;
      uint64_t r = 0;
      for (char c : s) {
        uint64_t next = r * 10 + static_cast<uint64_t>(c - '0');
        if (next / 10 != r) return std::nullopt;  // overflow
        r = next;
      }
      return r;
    }
    default: return std::nullopt;
  }
}

std::optional<uint64_t> U64(element obj, std::string_view key) {
  auto v = Get(obj, key);
  return v ? AsU64(*v) : std::nullopt;
}

std::optional<int64_t> I64(element obj, std::string_view key) {
  auto v = Get(obj, key);
  if (!v) return std::nullopt;
  if (v->type() == element_type::INT64) return v->get_int64().value();
  if (v->type() == element_type::STRING) {
    std::string_view s = core::Trim(v->get_string().value());
    if (!s.empty() && s[0] == '-' && core::AllDigits(s.substr(1)) && s.size() < 20) {
      return -static_cast<int64_t>(std::stoull(std::string(s.substr(1))));
    }
  }
  auto u = AsU64(*v);
  if (u && *u <= static_cast<uint64_t>(INT64_MAX)) return static_cast<int64_t>(*u);
  return std::nullopt;
}

// A list of strings: a JSON array, or text separated by commas/semicolons.
std::vector<std::string> StringList(element obj, std::string_view key) {
  std::vector<std::string> out;
  auto v = Get(obj, key);
  if (!v) return out;
  if (v->type() == element_type::ARRAY) {
    for (element x : Elements(*v)) {
      std::string s = AsText(x);
      if (!s.empty()) out.push_back(std::move(s));
    }
  } else {
    std::string s = AsText(*v);
    size_t start = 0;
    while (start <= s.size()) {
      size_t end = s.find_first_of(",;", start);
      std::string part(core::Trim(std::string_view(s).substr(
          start, end == std::string::npos ? std::string::npos : end - start)));
      if (!part.empty()) out.push_back(std::move(part));
      if (end == std::string::npos) break;
      start = end + 1;
    }
  }
  return out;
}

// Seconds or milliseconds since the epoch, formatted; payload times are
// documented as seconds but some exporters write milliseconds.
std::string FormatEpoch(int64_t v) {
  return v >= 100000000000LL ? core::FormatUtcMillis(v) : core::FormatUtcSeconds(v);
}

std::optional<int64_t> EpochSeconds(element obj, std::string_view key) {
  auto v = I64(obj, key);
  if (!v) return std::nullopt;
  return *v >= 100000000000LL ? *v / 1000 : *v;
}

void AddFact(core::Item& item, std::string_view label, std::string value) {
  if (!value.empty()) item.facts.push_back({std::string(label), std::move(value)});
}

std::string FormatBytes(uint64_t n) {
  if (n < 1024) return fmt::format("{} bytes", n);
  if (n < 1024 * 1024) return fmt::format("{:.1f} KiB", n / 1024.0);
  if (n < 1024ull * 1024 * 1024) return fmt::format("{:.1f} MiB", n / (1024.0 * 1024));
  return fmt::format("{:.2f} GiB", n / (1024.0 * 1024 * 1024));
}

// ---------------------------------------------------------------------------
// Line repair: the three ways real exports break simdjson's strict parser.

// Escapes raw control characters inside strings and quotes integers too big
// for uint64 (ids) so they survive as text. Returns true if anything changed.
bool RepairJsonText(std::string_view in, std::string* out, bool* escaped_controls,
                    bool* quoted_numbers) {
  out->clear();
  out->reserve(in.size() + 16);
  bool in_string = false, changed = false;
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (in_string) {
      if (c == '\\' && i + 1 < in.size()) {
        out->push_back(c);
        out->push_back(in[++i]);
        continue;
      }
      if (c == '"') in_string = false;
      auto uc = static_cast<unsigned char>(c);
      if (uc < 0x20) {
        out->append(fmt::format("\\u{:04x}", uc));
        *escaped_controls = changed = true;
        continue;
      }
      out->push_back(c);
      continue;
    }
    if (c == '"') {
      in_string = true;
      out->push_back(c);
      continue;
    }
    if ((c >= '0' && c <= '9') || (c == '-' && i + 1 < in.size() && in[i + 1] >= '0' &&
                                   in[i + 1] <= '9')) {
      size_t j = i + 1;
      while (j < in.size() && in[j] >= '0' && in[j] <= '9') ++j;
      bool plain_int = j >= in.size() || (in[j] != '.' && in[j] != 'e' && in[j] != 'E');
      size_t digits = j - i - (c == '-' ? 1 : 0);
      if (plain_int && digits > 19 && c != '-') {
        out->push_back('"');
        out->append(in.substr(i, j - i));
        out->push_back('"');
        *quoted_numbers = changed = true;
      } else {
        out->append(in.substr(i, j - i));
      }
      i = j - 1;
      continue;
    }
    out->push_back(c);
  }
  return changed;
}

// ---------------------------------------------------------------------------

struct Ctx {
  core::Item& item;
  element record;
  std::optional<element> payload;
  std::function<std::optional<element>(std::string_view, int)> parse_embedded;
};

std::string MediaName(const core::Item& item, std::string_view role, std::string_view ext,
                      size_t n) {
  int64_t secs = item.msgtime_ms / 1000;
  std::string stamp = core::FormatUtcMillis(secs * 1000);  // "YYYY-MM-DD HH:MM:SS UTC"
  std::string compact;
  for (char c : stamp.substr(0, 19)) {
    if (c >= '0' && c <= '9') compact.push_back(c);
  }
  if (compact.size() == 14) compact.insert(8, "-");
  std::string name = fmt::format("{}-{}", role, compact);
  if (n > 1) name += fmt::format("-{}", n);
  if (!ext.empty()) name += fmt::format(".{}", ext);
  return name;
}

// Adds a media reference from a payload object with the usual WeCom fields.
core::MediaRef& AddMedia(core::Item& item, element p, std::string role, std::string ext,
                         std::string_view size_key = "filesize") {
  core::MediaRef m;
  m.role = std::move(role);
  m.sdkfileid = Text(p, "sdkfileid");
  m.md5sum = core::AsciiLower(core::Trim(Text(p, "md5sum")));
  m.declared_size = U64(p, size_key);
  if (!m.declared_size && size_key != "filesize") m.declared_size = U64(p, "filesize");
  if (!m.declared_size) m.declared_size = U64(p, "size");
  m.filename = Text(p, "filename");
  std::string fileext = core::AsciiLower(core::Trim(Text(p, "fileext")));
  m.extension = !fileext.empty() ? fileext : std::move(ext);
  if (m.extension.empty() && !m.filename.empty()) {
    size_t dot = m.filename.rfind('.');
    if (dot != std::string::npos && m.filename.size() - dot <= 8) {
      m.extension = core::AsciiLower(m.filename.substr(dot + 1));
    }
  }
  if (m.filename.empty()) {
    size_t same_role = 1;
    for (const auto& x : item.media) same_role += (x.role == m.role);
    m.filename = MediaName(item, m.role, m.extension, same_role);
  }
  item.media.push_back(std::move(m));
  return item.media.back();
}

void RequirePayload(Ctx& c) {
  if (!c.payload) {
    c.item.notes.push_back(fmt::format("the record has no '{}' payload", c.item.msgtype));
    c.item.attach_raw = true;
  }
}

// Summarizes one embedded entry of a chatrecord or mixed message; adds its
// media to the item. `type` is e.g. "ChatRecordImage" or "image".
core::Entry SummarizeEmbedded(Ctx& c, std::string_view type, std::string_view content_json,
                              int depth) {
  core::Entry e;
  e.type = std::string(type);
  std::string t = core::AsciiLower(type);
  if (t.rfind("chatrecord", 0) == 0) t = t.substr(10);
  auto content = c.parse_embedded(content_json, depth);
  if (!content) {
    e.text = std::string(content_json);  // not JSON: show as given
    return e;
  }
  element p = *content;
  if (t == "text" || t == "markdown") {
    e.text = Text(p, "content");
  } else if (t == "image") {
    AddMedia(c.item, p, "image", "jpg");
    e.text = "[image: " + c.item.media.back().filename + "]";
  } else if (t == "voice") {
    AddMedia(c.item, p, "voice", "amr", "voice_size");
    e.text = "[voice message: " + c.item.media.back().filename + "]";
  } else if (t == "video") {
    AddMedia(c.item, p, "video", "mp4");
    e.text = "[video: " + c.item.media.back().filename + "]";
  } else if (t == "emotion") {
    auto type_num = U64(p, "type");
    AddMedia(c.item, p, "emotion", type_num && *type_num == 2 ? "png" : "gif", "imagesize");
    e.text = "[sticker: " + c.item.media.back().filename + "]";
  } else if (t == "file") {
    AddMedia(c.item, p, "file", "");
    const auto& m = c.item.media.back();
    e.text = "[file: " + m.filename +
             (m.declared_size ? " (" + FormatBytes(*m.declared_size) + ")" : "") + "]";
  } else if (t == "link") {
    e.text = Text(p, "title");
    std::string url = Text(p, "link_url");
    if (!url.empty()) e.text += (e.text.empty() ? "" : " ") + url;
  } else if (t == "location") {
    e.text = fmt::format("[location: {} {}]", Text(p, "title"), Text(p, "address"));
  } else if (t == "card") {
    std::string corp = Text(p, "corpname");
    e.text = fmt::format("[contact card: {}{}]", TextAny(p, {"userid", "Userid", "UserId"}),
                         corp.empty() ? "" : " (" + corp + ")");
  } else if (t == "weapp") {
    e.text = fmt::format("[mini program: {}]", TextAny(p, {"title", "displayname"}));
  } else if (t == "voiptext") {
    auto d = I64(p, "callduration");
    e.text = fmt::format("[call{}]", d ? ", duration " + core::FormatDuration(*d) : std::string());
  } else if (t == "meetingvoicecall" || t == "meeting_voice_call") {
    if (!Text(p, "sdkfileid").empty()) AddMedia(c.item, p, "recording", "");
    e.text = "[voice meeting recording]";
  } else if (t == "voipdocshare" || t == "voip_doc_share") {
    AddMedia(c.item, p, "document", "");
    e.text = "[document shared in a call: " + c.item.media.back().filename + "]";
  } else if (t == "mixed") {
    std::vector<std::string> parts;
    if (auto items = Get(p, "item"); items && items->type() == element_type::ARRAY) {
      for (element sub : Elements(*items)) {
        std::string sub_type = Text(sub, "type");
        std::string sub_content = Text(sub, "content");
        if (depth + 1 < 4) parts.push_back(SummarizeEmbedded(c, sub_type, sub_content, depth + 1).text);
      }
    }
    e.text = fmt::format("{}", fmt::join(parts, " "));
  } else if (auto s = Get(p, "content"); s && s->type() == element_type::STRING) {
    e.text = std::string(s->get_string().value());
  } else if (auto s2 = Get(p, "title")) {
    e.text = AsText(*s2);
  } else {
    e.text = simdjson::minify(p);
  }
  return e;
}

// ---- one handler per msgtype ----------------------------------------------

void OnText(Ctx& c) {
  RequirePayload(c);
  c.item.label = "";
  if (c.payload) c.item.text = Text(*c.payload, "content");
}

void OnMarkdown(Ctx& c) {
  RequirePayload(c);
  c.item.label = "markdown";
  if (c.payload) {
    c.item.text = Text(*c.payload, "content");
    if (c.item.text.empty()) c.item.text = Text(*c.payload, "markdown");
  }
}

void OnLink(Ctx& c) {
  RequirePayload(c);
  c.item.label = "link";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title"), url = Text(p, "link_url");
  c.item.label = title.empty() ? "link" : "link: " + title;
  c.item.text = title.empty() ? url : title + "\n" + url;
  AddFact(c.item, "Title", title);
  AddFact(c.item, "Description", Text(p, "description"));
  AddFact(c.item, "URL", url);
  AddFact(c.item, "Image URL", Text(p, "image_url"));
}

void OnWeapp(Ctx& c) {
  RequirePayload(c);
  c.item.label = "mini program";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title");
  if (!title.empty()) c.item.label = "mini program: " + title;
  c.item.text = title;
  AddFact(c.item, "Title", title);
  AddFact(c.item, "Description", Text(p, "description"));
  AddFact(c.item, "Mini program", Text(p, "displayname"));
  AddFact(c.item, "Mini program id", Text(p, "username"));
}

void OnCard(Ctx& c) {
  RequirePayload(c);
  c.item.label = "contact card";
  if (!c.payload) return;
  element p = *c.payload;
  std::string user = TextAny(p, {"userid", "Userid", "UserId"}), corp = Text(p, "corpname");
  c.item.text = corp.empty() ? "Contact card: " + user
                             : fmt::format("Contact card: {} ({})", user, corp);
  AddFact(c.item, "User id", user);
  AddFact(c.item, "Company", corp);
}

void OnLocation(Ctx& c) {
  RequirePayload(c);
  c.item.label = "location";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title"), address = Text(p, "address");
  std::string lat = Text(p, "latitude"), lon = Text(p, "longitude");
  c.item.label = title.empty() ? "location" : "location: " + title;
  c.item.text = fmt::format("{}{}{}", title, title.empty() || address.empty() ? "" : ", ", address);
  AddFact(c.item, "Place", title);
  AddFact(c.item, "Address", address);
  if (!lat.empty() || !lon.empty()) AddFact(c.item, "Coordinates", lat + ", " + lon);
  AddFact(c.item, "Zoom", Text(p, "zoom"));
}

void OnMedia(Ctx& c, const char* role, const char* ext, const char* label,
             std::string_view size_key = "filesize") {
  RequirePayload(c);
  c.item.kind = core::ItemKind::kMedia;
  c.item.label = label;
  if (!c.payload) return;
  element p = *c.payload;
  std::string extension = ext;
  if (std::string_view(role) == "emotion") {
    auto type_num = U64(p, "type");
    extension = (type_num && *type_num == 2) ? "png" : "gif";
    AddFact(c.item, "Size (pixels)", fmt::format("{} x {}", Text(p, "width"), Text(p, "height")));
  }
  auto& m = AddMedia(c.item, p, role, extension, size_key);
  if (auto play = U64(p, "play_length")) {
    c.item.label = fmt::format("{} ({})", label, core::FormatDuration(static_cast<int64_t>(*play)));
    AddFact(c.item, "Length", core::FormatDuration(static_cast<int64_t>(*play)));
  }
  if (m.declared_size) AddFact(c.item, "Size", FormatBytes(*m.declared_size));
}

void OnFile(Ctx& c) {
  RequirePayload(c);
  c.item.kind = core::ItemKind::kFile;
  c.item.label = "file";
  if (!c.payload) return;
  auto& m = AddMedia(c.item, *c.payload, "file", "");
  c.item.label = "file " + core::OneLine(m.filename);
  AddFact(c.item, "File name", m.filename);
  if (m.declared_size) AddFact(c.item, "Size", FormatBytes(*m.declared_size));
  AddFact(c.item, "MD5", m.md5sum);
}

void OnQyDiskFile(Ctx& c) {
  RequirePayload(c);
  c.item.kind = core::ItemKind::kFile;
  c.item.label = "WeDrive file";
  if (!c.payload) return;
  std::string name = Text(*c.payload, "filename");
  c.item.label = "WeDrive file " + core::OneLine(name);
  c.item.text = "Shared a WeDrive (微盘) file: " + name;
  AddFact(c.item, "File name", name);
}

void OnChatRecord(Ctx& c) {
  RequirePayload(c);
  c.item.label = "chat history";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title");
  if (!title.empty()) c.item.label = "chat history: " + title;
  c.item.text = title.empty() ? "Forwarded chat history" : "Forwarded chat history: " + title;
  if (auto items = Get(p, "item"); items && items->type() == element_type::ARRAY) {
    for (element it : Elements(*items)) {
      std::string content;
      if (auto cv = Get(it, "content")) {
        content = cv->type() == element_type::STRING ? std::string(cv->get_string().value())
                                                     : simdjson::minify(*cv);
      }
      core::Entry e = SummarizeEmbedded(c, Text(it, "type"), content, 1);
      e.time_s = EpochSeconds(it, "msgtime");
      if (auto fc = Get(it, "from_chatroom"); fc && AsText(*fc) == "true") {
        e.type += " (from group chat)";
      }
      c.item.entries.push_back(std::move(e));
    }
  }
}

void OnMixed(Ctx& c) {
  RequirePayload(c);
  c.item.label = "mixed message";
  if (!c.payload) return;
  std::vector<std::string> texts;
  if (auto items = Get(*c.payload, "item"); items && items->type() == element_type::ARRAY) {
    for (element it : Elements(*items)) {
      std::string type = Text(it, "type");
      std::string content = Text(it, "content");
      core::Entry e = SummarizeEmbedded(c, type, content, 1);
      texts.push_back(e.text);
    }
  }
  c.item.text = fmt::format("{}", fmt::join(texts, "\n"));
}

void OnNews(Ctx& c) {
  RequirePayload(c);
  c.item.label = "news";
  if (!c.payload) return;
  if (auto items = Get(*c.payload, "item"); items && items->type() == element_type::ARRAY) {
    for (element it : Elements(*items)) {
      core::Entry e;
      e.type = "news";
      std::string title = Text(it, "title"), desc = Text(it, "description"), url = Text(it, "url");
      e.text = title;
      if (!desc.empty()) e.text += " - " + desc;
      if (!url.empty()) e.text += " " + url;
      if (c.item.text.empty()) c.item.text = title;
      c.item.entries.push_back(std::move(e));
    }
  }
  if (!c.item.text.empty()) c.item.label = "news: " + c.item.text;
}

void OnTodo(Ctx& c) {
  // NICEXAI nests it under "todo"; other SDKs put the fields at the top level.
  element p = c.payload ? *c.payload : c.record;
  std::string title = Text(p, "title"), content = Text(p, "content");
  c.item.label = title.empty() ? "to-do" : "to-do: " + title;
  c.item.text = content.empty() ? title : content;
  AddFact(c.item, "Title", title);
}

void OnVote(Ctx& c) {
  // vote fields sit at the top level of the record.
  element p = c.payload ? *c.payload : c.record;
  if (!Get(p, "votetitle") && Get(c.record, "votetitle")) p = c.record;
  std::string title = Text(p, "votetitle");
  auto type = U64(p, "votetype");
  c.item.label = title.empty() ? "vote" : "vote: " + title;
  std::vector<std::string> options = StringList(p, "voteitem");
  c.item.text = (type && *type == 102 ? "Voted: " : "Vote: ") + title;
  for (const auto& o : options) c.item.text += "\n- " + o;
  AddFact(c.item, "Action", type ? (*type == 101 ? "created the vote" : *type == 102 ? "voted" : std::to_string(*type)) : "");
  AddFact(c.item, "Vote id", Text(p, "voteid"));
}

void OnCollect(Ctx& c) {
  RequirePayload(c);
  c.item.label = "form";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title");
  if (!title.empty()) c.item.label = "form: " + title;
  c.item.text = "Form (接龙/填表): " + title;
  AddFact(c.item, "Group", Text(p, "room_name"));
  AddFact(c.item, "Creator", Text(p, "creator"));
  AddFact(c.item, "Created", Text(p, "create_time"));
  if (auto details = Get(p, "details"); details && details->type() == element_type::ARRAY) {
    for (element d : Elements(*details)) {
      c.item.entries.push_back({Text(d, "type"), std::nullopt,
                                fmt::format("{} (question {})", Text(d, "ques"), Text(d, "id"))});
    }
  }
}

void OnRedPacket(Ctx& c) {
  // external_redpacket keeps its payload under "redpacket"; some exports
  // put a plain redpacket under "external_redpacket".
  if (!c.payload) c.payload = Get(c.record, "redpacket");
  if (!c.payload) c.payload = Get(c.record, "external_redpacket");
  RequirePayload(c);
  c.item.label = "red packet";
  if (!c.payload) return;
  element p = *c.payload;
  auto type = U64(p, "type");
  static const char* kTypes[] = {"", "normal", "lucky draw", "incentive"};
  std::string type_name = type && *type >= 1 && *type <= 3 ? kTypes[*type] : Text(p, "type");
  auto fen = U64(p, "totalamount");
  std::string amount = fen ? fmt::format("CNY {}.{:02}", *fen / 100, *fen % 100) : "";
  c.item.text = fmt::format("Red packet: {}", Text(p, "wish"));
  AddFact(c.item, "Type", type_name);
  AddFact(c.item, "Wish", Text(p, "wish"));
  AddFact(c.item, "Packets", Text(p, "totalcnt"));
  AddFact(c.item, "Total amount", amount);
}

// A scheduled meeting (会议邀请): an invitation with its time slot, not a
// call that happened.
void OnMeeting(Ctx& c) {
  RequirePayload(c);
  c.item.label = "meeting invitation";
  if (!c.payload) return;
  element p = *c.payload;
  std::string topic = Text(p, "topic");
  if (!topic.empty()) c.item.label = "meeting invitation: " + topic;
  auto start = EpochSeconds(p, "starttime"), end = EpochSeconds(p, "endtime");
  std::string slot;
  if (start) slot = core::FormatUtcSeconds(*start);
  if (end) slot += (slot.empty() ? "until " : " - ") + core::FormatUtcSeconds(*end);
  c.item.text = "Meeting invitation: " + topic;
  if (!slot.empty()) c.item.text += "\nWhen: " + slot;
  auto mtype = U64(p, "meetingtype");
  AddFact(c.item, "Topic", topic);
  AddFact(c.item, "When", slot);
  if (start && end && *end >= *start) AddFact(c.item, "Scheduled length", core::FormatDuration(*end - *start));
  AddFact(c.item, "Address", Text(p, "address"));
  AddFact(c.item, "Remarks", Text(p, "remarks"));
  AddFact(c.item, "Meeting id", Text(p, "meetingid"));
  AddFact(c.item, "Action", mtype ? (*mtype == 101 ? "invited" : *mtype == 102 ? "responded" : std::to_string(*mtype)) : "");
  static const char* kStatus[] = {"",        "attending", "declined", "tentative",
                                  "not invited", "cancelled", "expired", "not in the room"};
  auto status = U64(p, "status");
  AddFact(c.item, "Response", status && *status >= 1 && *status <= 7 ? kStatus[*status] : Text(p, "status"));
}

// 笔记 (note): the field names are not documented; title and content where given.
void OnNote(Ctx& c) {
  RequirePayload(c);
  c.item.label = "note";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title");
  if (!title.empty()) c.item.label = "note: " + title;
  c.item.text = TextAny(p, {"content", "text", "title"});
  AddFact(c.item, "Title", title);
}

void OnCalendar(Ctx& c) {
  RequirePayload(c);
  c.item.label = "calendar";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title");
  if (!title.empty()) c.item.label = "calendar: " + title;
  c.item.text = "Calendar event: " + title;
  AddFact(c.item, "Title", title);
  AddFact(c.item, "Organizer", Text(p, "creatorname"));
  auto attendees = StringList(p, "attendeename");
  AddFact(c.item, "Attendees", fmt::format("{}", fmt::join(attendees, ", ")));
  if (auto s = I64(p, "starttime")) AddFact(c.item, "Starts", FormatEpoch(*s));
  if (auto e = I64(p, "endtime")) AddFact(c.item, "Ends", FormatEpoch(*e));
  AddFact(c.item, "Place", Text(p, "place"));
  AddFact(c.item, "Remarks", Text(p, "remarks"));
}

void OnDocMsg(Ctx& c) {
  if (!c.payload) c.payload = Get(c.record, "doc");
  RequirePayload(c);
  c.item.label = "document";
  if (!c.payload) return;
  element p = *c.payload;
  std::string title = Text(p, "title");
  if (!title.empty()) c.item.label = "document: " + title;
  c.item.text = title + "\n" + Text(p, "link_url");
  AddFact(c.item, "Title", title);
  AddFact(c.item, "URL", Text(p, "link_url"));
  AddFact(c.item, "Creator", TextAny(p, {"doc_creator", "creator"}));
}

void OnSphFeed(Ctx& c) {
  RequirePayload(c);
  c.item.label = "Channels post";
  if (!c.payload) return;
  element p = *c.payload;
  auto ft = U64(p, "feed_type");
  std::string kind = !ft ? "" : *ft == 2 ? "image" : *ft == 4 ? "video" : *ft == 9 ? "live stream" : std::to_string(*ft);
  c.item.text = Text(p, "feed_desc");
  AddFact(c.item, "Channel", Text(p, "sph_name"));
  AddFact(c.item, "Post type", kind);
}

void OnAgree(Ctx& c, bool agree) {
  RequirePayload(c);
  c.item.label = agree ? "consent: agreed" : "consent: declined";
  if (!c.payload) return;
  element p = *c.payload;
  std::string user = Text(p, "userid");
  c.item.text = fmt::format("{} {} to having the conversation archived", user,
                            agree ? "agreed" : "did not agree");
  AddFact(c.item, "User", user);
  if (auto t = I64(p, agree ? "agree_time" : "disagree_time")) {
    AddFact(c.item, "Time", FormatEpoch(*t));
  }
}

const char* InviteTypeName(std::optional<uint64_t> t) {
  if (!t) return "call";
  switch (*t) {
    case 1: return "video call (1:1)";
    case 2: return "voice call (1:1)";
    case 3: return "group video call";
    case 4: return "group voice call";
    default: return "call";
  }
}

void OnVoipText(Ctx& c) {
  if (!c.payload) c.payload = Get(c.record, "info");
  RequirePayload(c);
  c.item.kind = core::ItemKind::kCall;
  core::CallInfo call;
  call.call_type = "call";
  if (c.payload) {
    element p = *c.payload;
    call.call_type = InviteTypeName(U64(p, "invitetype"));
    if (auto d = I64(p, "callduration")) call.duration_s = *d;
  }
  call.start_s = c.item.msgtime_ms / 1000;
  c.item.label = call.call_type;
  c.item.text = call.duration_s
                    ? fmt::format("{}, duration {}", call.call_type, core::FormatDuration(*call.duration_s))
                    : call.call_type;
  c.item.call = call;
}

void OnMeetingVoiceCall(Ctx& c) {
  RequirePayload(c);
  c.item.kind = core::ItemKind::kCall;
  core::CallInfo call;
  call.call_type = "voice meeting recording";
  call.start_s = c.item.msgtime_ms / 1000;
  AddFact(c.item, "Recording id", Text(c.record, "voiceid"));
  if (c.payload) {
    element p = *c.payload;
    call.end_s = EpochSeconds(p, "endtime");
    if (call.end_s && *call.end_s >= *call.start_s) call.duration_s = *call.end_s - *call.start_s;
    if (!Text(p, "sdkfileid").empty()) AddMedia(c.item, p, "recording", "");
    if (auto docs = Get(p, "demofiledata"); docs && docs->type() == element_type::ARRAY) {
      for (element d : Elements(*docs)) {
        core::Entry e;
        e.type = "shared document";
        e.time_s = EpochSeconds(d, "starttime");
        e.text = fmt::format("{} shared {}", Text(d, "demooperator"), Text(d, "filename"));
        if (auto end = EpochSeconds(d, "endtime"); end && e.time_s) {
          e.text += fmt::format(" for {}", core::FormatDuration(*end - *e.time_s));
        }
        c.item.entries.push_back(std::move(e));
      }
    }
    if (auto shares = Get(p, "sharescreendata"); shares && shares->type() == element_type::ARRAY) {
      for (element d : Elements(*shares)) {
        core::Entry e;
        e.type = "screen share";
        e.time_s = EpochSeconds(d, "starttime");
        e.text = fmt::format("{} shared the screen", Text(d, "share"));
        if (auto end = EpochSeconds(d, "endtime"); end && e.time_s) {
          e.text += fmt::format(" for {}", core::FormatDuration(*end - *e.time_s));
        }
        c.item.entries.push_back(std::move(e));
      }
    }
  }
  c.item.label = "voice meeting";
  c.item.text = call.duration_s ? fmt::format("Voice meeting, duration {}",
                                              core::FormatDuration(*call.duration_s))
                                : "Voice meeting";
  c.item.call = call;
}

void OnVoipDocShare(Ctx& c) {
  RequirePayload(c);
  c.item.kind = core::ItemKind::kCall;
  core::CallInfo call;
  call.call_type = "document shared in a call";
  call.start_s = c.item.msgtime_ms / 1000;
  c.item.call = call;
  c.item.label = "document shared in a call";
  AddFact(c.item, "Call id", Text(c.record, "voipid"));
  if (!c.payload) return;
  auto& m = AddMedia(c.item, *c.payload, "document", "");
  c.item.label = "document shared in a call: " + core::OneLine(m.filename);
  c.item.text = "Shared in a call: " + m.filename;
  if (m.declared_size) AddFact(c.item, "Size", FormatBytes(*m.declared_size));
}

void OnMeetingNotification(Ctx& c) {
  if (!c.payload) c.payload = Get(c.record, "info");
  RequirePayload(c);
  c.item.label = "meeting notification";
  if (!c.payload) return;
  element p = *c.payload;
  c.item.text = Text(p, "content");
  AddFact(c.item, "Meeting id", Text(p, "meeting_id"));
  AddFact(c.item, "Notification type", Text(p, "notification_type"));
}

void OnRevoke(Ctx& c) {
  c.item.kind = core::ItemKind::kRecall;
  c.item.label = "recall";
  if (!c.payload) c.payload = Get(c.record, "revoke");
  if (c.payload) c.item.recalled_msgid = Text(*c.payload, "pre_msgid");
  if (c.item.recalled_msgid.empty()) {
    c.item.notes.push_back("the recall record does not name the recalled message (no pre_msgid)");
    c.item.attach_raw = true;
  }
}

void OnUnknown(Ctx& c) {
  c.item.kind = core::ItemKind::kUnknown;
  c.item.label = c.item.msgtype.empty() ? "message of unknown type" : c.item.msgtype;
  c.item.attach_raw = true;
  static const char* kEnvelope[] = {"msgid", "action", "from", "tolist", "roomid", "msgtime",
                                    "msgtype", "seq"};
  auto add_scalars = [&](element obj, bool skip_envelope) {
    if (obj.type() != element_type::OBJECT) return;
    simdjson::dom::object o;
    if (obj.get_object().get(o) != simdjson::SUCCESS) return;
    for (auto [k, v] : o) {
      if (skip_envelope) {
        bool env = false;
        for (const char* e : kEnvelope) env |= (k == e);
        if (env) continue;
      }
      if (v.type() == element_type::OBJECT || v.type() == element_type::ARRAY) {
        AddFact(c.item, k, simdjson::minify(v));
      } else {
        AddFact(c.item, k, AsText(v));
      }
    }
  };
  if (c.payload) {
    add_scalars(*c.payload, false);
    if (!Text(*c.payload, "sdkfileid").empty()) AddMedia(c.item, *c.payload, "attachment", "");
  } else {
    add_scalars(c.record, true);
  }
}

// Payload fields each handler shows. Whatever else a payload (or the record
// itself) carries goes into the item's facts as it is, so nothing a record
// says is lost (weapp.appid, weapp.pagepath, fields of newer API versions).
const std::unordered_map<std::string_view, std::vector<std::string_view>>& ShownKeys() {
  static const std::unordered_map<std::string_view, std::vector<std::string_view>> kKeys = {
      {"text", {"content"}},
      {"markdown", {"content", "markdown"}},
      {"link", {"title", "description", "link_url", "image_url"}},
      {"weapp", {"title", "description", "displayname", "username"}},
      {"card", {"userid", "Userid", "UserId", "corpname"}},
      {"location", {"title", "address", "latitude", "longitude", "zoom"}},
      {"emotion", {"type", "width", "height", "imagesize", "sdkfileid", "md5sum", "filesize", "size"}},
      {"image", {"sdkfileid", "md5sum", "filesize", "size"}},
      {"voice", {"sdkfileid", "md5sum", "voice_size", "filesize", "size", "play_length"}},
      {"video", {"sdkfileid", "md5sum", "filesize", "size", "play_length"}},
      {"file", {"filename", "fileext", "filesize", "size", "md5sum", "sdkfileid"}},
      {"qydiskfile", {"filename"}},
      {"chatrecord", {"title", "item"}},
      {"mixed", {"item"}},
      {"news", {"item"}},
      {"todo", {"title", "content"}},
      {"vote", {"votetitle", "voteitem", "votetype", "voteid"}},
      {"collect", {"room_name", "creator", "create_time", "title", "details"}},
      {"redpacket", {"type", "wish", "totalcnt", "totalamount"}},
      {"external_redpacket", {"type", "wish", "totalcnt", "totalamount"}},
      {"meeting", {"topic", "starttime", "endtime", "address", "remarks", "meetingtype", "meetingid", "status"}},
      {"calendar", {"title", "creatorname", "attendeename", "starttime", "endtime", "place", "remarks"}},
      {"docmsg", {"title", "link_url", "doc_creator", "creator"}},
      {"sphfeed", {"feed_type", "sph_name", "feed_desc"}},
      {"agree", {"userid", "agree_time"}},
      {"disagree", {"userid", "disagree_time"}},
      {"voiptext", {"callduration", "invitetype"}},
      {"meeting_voice_call", {"endtime", "sdkfileid", "md5sum", "filesize", "demofiledata", "sharescreendata"}},
      {"meetingvoicecall", {"endtime", "sdkfileid", "md5sum", "filesize", "demofiledata", "sharescreendata"}},
      {"voip_doc_share", {"filename", "md5sum", "filesize", "sdkfileid"}},
      {"voipdocshare", {"filename", "md5sum", "filesize", "sdkfileid"}},
      {"meeting_notification", {"meeting_id", "notification_type", "content"}},
      {"note", {"title", "content", "text"}},
      {"revoke", {"pre_msgid"}},
  };
  return kKeys;
}

// The record's own fields that are not payload: the envelope, and the
// places where a payload may sit.
bool IsEnvelopeKey(std::string_view k, std::string_view msgtype) {
  static const std::string_view kEnvelope[] = {"msgid", "action", "from", "tolist", "roomid", "msgtime",
                                                "msgtype", "seq", "voiceid", "voipid", "info", "doc",
                                                "redpacket", "external_redpacket"};
  for (auto e : kEnvelope) {
    if (k == e) return true;
  }
  return k == msgtype;
}

void AddUnshownFields(Ctx& c) {
  auto shown_it = ShownKeys().find(c.item.msgtype);
  if (shown_it == ShownKeys().end()) return;  // unknown types list everything already
  const auto& shown = shown_it->second;
  auto is_shown = [&](std::string_view k) { return std::find(shown.begin(), shown.end(), k) != shown.end(); };
  auto add = [&](element obj, bool top_level) {
    simdjson::dom::object o;
    if (obj.get_object().get(o) != simdjson::SUCCESS) return;
    for (auto [k, v] : o) {
      if (top_level ? (IsEnvelopeKey(k, c.item.msgtype) || is_shown(k)) : is_shown(k)) continue;
      if (v.type() == element_type::NULL_VALUE) continue;
      AddFact(c.item, k, v.type() == element_type::OBJECT || v.type() == element_type::ARRAY
                             ? simdjson::minify(v)
                             : AsText(v));
    }
  };
  if (c.payload && c.payload->type() == element_type::OBJECT) add(*c.payload, false);
  add(c.record, true);
}

// Hash of what an item says, in a fixed field order with length prefixes,
// after the lenient parse: formatting, key order and numbers written as
// strings do not change it; different text, people, time or media do.
std::string ContentHash(const core::Item& item) {
  core::Sha256Stream h;
  auto put = [&](std::string_view s) {
    uint64_t n = s.size();
    h.Update(std::string_view(reinterpret_cast<const char*>(&n), sizeof n));
    h.Update(s);
  };
  put(item.msgtype);
  put(item.action);
  put(item.from);
  for (const auto& t : item.to) put(t);
  put("|");
  put(item.roomid);
  put(std::to_string(item.msgtime_ms));
  put(item.text);
  for (const auto& f : item.facts) {
    put(f.label);
    put(f.value);
  }
  for (const auto& e : item.entries) {
    put(e.type);
    put(e.time_s ? std::to_string(*e.time_s) : "");
    put(e.text);
  }
  for (const auto& m : item.media) {
    put(m.role);
    put(m.sdkfileid);
    put(m.md5sum);
    put(m.declared_size ? std::to_string(*m.declared_size) : "");
    put(m.filename);
  }
  put(item.recalled_msgid);
  core::Sha256Digest d = h.Finish();
  return std::string(reinterpret_cast<const char*>(d.data()), 16);
}

using Handler = void (*)(Ctx&);
const std::unordered_map<std::string_view, Handler>& Handlers() {
  static const std::unordered_map<std::string_view, Handler> kHandlers = {
      {"text", OnText},
      {"markdown", [](Ctx& c) { if (!c.payload) c.payload = Get(c.record, "info"); OnMarkdown(c); }},
      {"link", OnLink},
      {"weapp", OnWeapp},
      {"card", OnCard},
      {"location", OnLocation},
      {"emotion", [](Ctx& c) { OnMedia(c, "emotion", "gif", "sticker", "imagesize"); }},
      {"image", [](Ctx& c) { OnMedia(c, "image", "jpg", "image"); }},
      {"voice", [](Ctx& c) { OnMedia(c, "voice", "amr", "voice message", "voice_size"); }},
      {"video", [](Ctx& c) { OnMedia(c, "video", "mp4", "video"); }},
      {"file", OnFile},
      {"qydiskfile", [](Ctx& c) { if (!c.payload) c.payload = Get(c.record, "info"); OnQyDiskFile(c); }},
      {"chatrecord", OnChatRecord},
      {"mixed", OnMixed},
      {"news", [](Ctx& c) { if (!c.payload) c.payload = Get(c.record, "info"); OnNews(c); }},
      {"todo", OnTodo},
      {"vote", OnVote},
      {"collect", OnCollect},
      {"redpacket", OnRedPacket},
      {"external_redpacket", OnRedPacket},
      {"meeting", OnMeeting},
      {"calendar", OnCalendar},
      {"docmsg", OnDocMsg},
      {"sphfeed", OnSphFeed},
      {"agree", [](Ctx& c) { OnAgree(c, true); }},
      {"disagree", [](Ctx& c) { OnAgree(c, false); }},
      {"voiptext", OnVoipText},
      {"meeting_voice_call", OnMeetingVoiceCall},
      {"meetingvoicecall", OnMeetingVoiceCall},
      {"voip_doc_share", OnVoipDocShare},
      {"voipdocshare", OnVoipDocShare},
      {"note", OnNote},
      {"meeting_notification", OnMeetingNotification},
      {"revoke", OnRevoke},
  };
  return kHandlers;
}

}  // namespace

bool IsKnownMsgType(std::string_view msgtype) { return Handlers().count(msgtype) != 0; }

struct RecordParser::Impl {
  ParseOptions options;
  simdjson::dom::parser parser;
  std::array<simdjson::dom::parser, 4> nested;  // one per embedding depth
  std::string repaired;
  std::string scratch;
  simdjson::padded_string embedded_buf[4];

  std::optional<element> ParseEmbedded(std::string_view json, int depth) {
    if (depth < 1 || depth >= 4) return std::nullopt;
    std::string_view t = core::Trim(json);
    if (t.empty() || (t.front() != '{' && t.front() != '[')) return std::nullopt;
    std::string fixed;
    bool ctl = false, big = false;
    if (RepairJsonText(t, &fixed, &ctl, &big)) t = fixed;
    std::string utf8;
    if (!core::IsValidUtf8(t)) {
      core::RepairUtf8(t, &utf8);
      t = utf8;
    }
    embedded_buf[depth] = simdjson::padded_string(t);
    element e;
    if (nested[depth].parse(embedded_buf[depth]).get(e) != simdjson::SUCCESS) return std::nullopt;
    return e;
  }
};

RecordParser::RecordParser(ParseOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->options = std::move(options);
}
RecordParser::~RecordParser() = default;

Result<Parsed> RecordParser::ParseLine(std::string_view line) {
  RawRecord r;
  r.bytes.reserve(line.size() + kRecordPadding);
  r.bytes.assign(line);
  r.line = 1;
  r.next_offset = line.size();
  return Parse(r, "(line)");
}

Result<Parsed> RecordParser::Parse(const RawRecord& rec, std::string_view file) {
  Impl& im = *impl_;
  if (rec.too_long) {
    return core::Status::Corruption(
        fmt::format("record longer than {} MiB; not parsed", kMaxRecordBytes >> 20));
  }
  std::vector<std::string> notes;
  bool repaired = false;
  element root;
  simdjson::error_code err;
  // A UTF-8 BOM is not JSON: files concatenated with cat keep one mid-file.
  const size_t bom = std::string_view(rec.bytes).substr(0, 3) == "\xEF\xBB\xBF" ? 3 : 0;
  const std::string_view body = std::string_view(rec.bytes).substr(bom);
  if (rec.bytes.capacity() >= rec.bytes.size() + simdjson::SIMDJSON_PADDING) {
    err = im.parser.parse(body.data(), body.size(), false).get(root);
  } else {
    err = im.parser.parse(body.data(), body.size(), true).get(root);
  }
  if (err == simdjson::UTF8_ERROR || err == simdjson::UNESCAPED_CHARS ||
      err == simdjson::NUMBER_ERROR) {
    std::string_view text = body;
    std::string utf8;
    if (!core::IsValidUtf8(text)) {
      size_t n = core::RepairUtf8(text, &utf8);
      text = utf8;
      notes.push_back(fmt::format(
          "the record had {} invalid UTF-8 sequence{}, replaced with U+FFFD; the original "
          "record is attached",
          n, n == 1 ? "" : "s"));
    }
    bool ctl = false, big = false;
    if (RepairJsonText(text, &im.repaired, &ctl, &big)) {
      text = im.repaired;
      if (ctl) notes.push_back("the record had raw control characters inside strings");
      if (big) notes.push_back("the record had integers too large for 64 bits, kept as text");
    } else {
      im.repaired.assign(text);
    }
    im.scratch.assign(text);
    im.scratch.reserve(im.scratch.size() + simdjson::SIMDJSON_PADDING);
    err = im.parser.parse(im.scratch.data(), im.scratch.size(), false).get(root);
    repaired = true;
  }
  if (err != simdjson::SUCCESS) {
    std::string why = simdjson::error_message(err);
    if (rec.unterminated) why += " (last line of the file has no newline: truncated?)";
    return core::Status::Corruption(fmt::format("not valid JSON: {}", why));
  }
  if (root.type() != element_type::OBJECT) {
    return core::Status::Corruption("record is not a JSON object");
  }

  Parsed out;
  core::Item& item = out.item;
  item.pos.file = std::string(file);
  item.pos.offset = rec.offset;
  item.pos.line = rec.line;
  // A line of the raw GetChatData reply, or one of its chatdata entries:
  // still encrypted, nothing to archive until the Finance SDK decrypts it.
  if (Get(root, "encrypt_chat_msg") || Get(root, "encrypt_random_key") || Get(root, "chatdata")) {
    return core::Status::Corruption(
        "an encrypted GetChatData reply (encrypt_random_key/encrypt_chat_msg), not a decrypted "
        "record: decrypt it first with the WeCom Finance SDK (DecryptData)");
  }
  item.msgid = Text(root, "msgid");
  item.action = Text(root, "action");
  if (item.msgid.empty()) return core::Status::Corruption("record has no msgid");

  if (item.action == "switch") {
    out.kind = Parsed::Kind::kSwitch;
    out.sw.msgid = item.msgid;
    out.sw.user = Text(root, "user");
    out.sw.time_ms = I64(root, "time").value_or(0);
    return out;
  }

  item.key = core::ItemKey::For(item.source_kind, im.options.corp, item.msgid);
  item.msgtype = Text(root, "msgtype");
  item.from = Text(root, "from");
  item.to = StringList(root, "tolist");
  item.roomid = Text(root, "roomid");
  // Dates a message can carry: 1970-01-01 .. 9999-12-31 (what a Date
  // header, a Maildir name and an IMAP INTERNALDATE can say). Anything else
  // is clamped and said so: the item is imported, dated where it can be.
  constexpr int64_t kMaxMs = 253402300799999;  // 9999-12-31 23:59:59.999 UTC
  auto t = I64(root, "msgtime");
  if (t) {
    item.msgtime_ms = *t;
    if (*t > 0 && *t < 100000000000LL) {  // before 1973 in ms: almost surely seconds
      item.msgtime_ms = *t * 1000;
      notes.push_back("msgtime looked like seconds, not milliseconds; read as seconds");
    } else if (*t == 0) {
      notes.push_back("msgtime is 0 (not given); dated 1970-01-01 00:00:00 UTC");
      item.attach_raw = true;
    } else if (*t < 0) {
      item.msgtime_ms = 0;
      notes.push_back(fmt::format("msgtime {} is before 1970; dated 1970-01-01 00:00:00 UTC", *t));
      item.attach_raw = true;
    } else if (*t > kMaxMs) {
      item.msgtime_ms = kMaxMs / 1000 * 1000;
      notes.push_back(fmt::format("msgtime {} is after the year 9999; dated 9999-12-31 23:59:59 UTC", *t));
      item.attach_raw = true;
    }
  } else {
    std::string given = Text(root, "msgtime");
    notes.push_back(given.empty() ? std::string("the record has no msgtime; dated 1970-01-01 00:00:00 UTC")
                                  : fmt::format("msgtime '{}' is not a usable time; dated 1970-01-01 00:00:00 UTC",
                                                core::OneLine(given).substr(0, 40)));
    item.attach_raw = true;
  }
  if (item.action.empty()) item.action = item.msgtype == "revoke" ? "recall" : "send";
  if (item.from.empty()) notes.push_back("the record has no sender ('from')");

  Ctx ctx{item, root, std::nullopt,
          [&im](std::string_view j, int d) { return im.ParseEmbedded(j, d); }};
  if (!item.msgtype.empty()) ctx.payload = Get(root, item.msgtype);
  if (ctx.payload && ctx.payload->type() != element_type::OBJECT) ctx.payload.reset();
  if (item.action == "recall") {
    OnRevoke(ctx);
    AddUnshownFields(ctx);
  } else if (auto it = Handlers().find(item.msgtype); it != Handlers().end()) {
    it->second(ctx);
    AddUnshownFields(ctx);
  } else {
    OnUnknown(ctx);
  }
  if (item.kind == core::ItemKind::kRecall && !item.recalled_msgid.empty()) {
    item.recalled_key = core::ItemKey::For(item.source_kind, im.options.corp, item.recalled_msgid);
  }
  if (repaired) item.attach_raw = true;
  item.record_hash = ContentHash(item);
  for (auto& n : notes) item.notes.push_back(std::move(n));
  if (item.attach_raw) item.raw = rec.bytes;
  return out;
}

}  // namespace wxa::wecom
