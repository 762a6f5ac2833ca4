#include "formats/mime/compose.h"

#include <algorithm>
#include <iterator>
#include <string_view>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/core/text.h"

namespace wxa::mime {

namespace {

constexpr size_t kMaxSubjectBytes = 200;
constexpr size_t kMaxNamesInSubject = 3;
constexpr size_t kMaxNamesInBody = 20;
// The largest date a Date header (and Maildir, IMAP) can say: 9999-12-31 23:59:59 UTC.
constexpr int64_t kMaxDateSeconds = 253402300799;

// The clean text of a value from the record: valid UTF-8 without controls.
// Single-line values (headers, names) get a space for each control or line
// break, so "a\r\nBcc: x" can neither inject a header nor glue words together.
std::string Clean(std::string_view s, bool keep_newlines) {
  std::string repaired;
  if (!core::IsValidUtf8(s)) {
    core::RepairUtf8(s, &repaired);
    s = repaired;
  }
  return keep_newlines ? core::StripControls(s, true) : core::OneLine(s);
}

std::string OneLineClean(std::string_view s) { return Clean(s, false); }

std::string DisplayName(const Person& p) {
  std::string n = OneLineClean(p.name);
  return n.empty() ? OneLineClean(p.id) : n;
}

template <typename... Args>
void Append(std::string* out, fmt::format_string<Args...> f, Args&&... args) {
  fmt::format_to(std::back_inserter(*out), f, std::forward<Args>(args)...);
}

void AppendNameList(const std::vector<Person>& people, size_t max_names, std::string* out) {
  for (size_t i = 0; i < people.size() && i < max_names; ++i) {
    if (i > 0) out->append(", ");
    out->append(DisplayName(people[i]));
  }
  if (people.size() > max_names) Append(out, " +{}", people.size() - max_names);
}

// Time of a recalled message from its id, when the id ends in "_<unix seconds>".
std::optional<int64_t> TimeFromMsgId(std::string_view msgid) {
  size_t us = msgid.rfind('_');
  if (us == std::string_view::npos) return std::nullopt;
  std::string_view tail = msgid.substr(us + 1);
  if (tail.size() != 10 || !core::AllDigits(tail)) return std::nullopt;
  int64_t v = 0;
  for (char c : tail) v = v * 10 + (c - '0');
  return v;
}

std::string RoomLabel(const core::Item& item) { return OneLineClean(item.roomid); }

bool IsAtext(char c) {
  static constexpr std::string_view kSpecials = "!#$%&'*+-/=?^_`{|}~";
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         kSpecials.find(c) != std::string_view::npos;
}

// An addr-spec the serializer can write as is: an ASCII dot-atom local part
// and a host name (what the mapper and SyntheticAddress produce). Anything
// else would need quoting or IDNA, and could smuggle syntax into a header.
bool IsPlainAddress(std::string_view a) {
  size_t at = a.rfind('@');
  if (at == std::string_view::npos || at == 0 || at > 64 || a.size() > 254) return false;
  std::string_view local = a.substr(0, at), domain = a.substr(at + 1);
  if (local.front() == '.' || local.back() == '.' || local.find("..") != std::string_view::npos) return false;
  for (char c : local) {
    if (c != '.' && !IsAtext(c)) return false;
  }
  if (domain.empty() || domain.size() > 253) return false;
  size_t start = 0;
  while (true) {
    size_t dot = domain.find('.', start);
    std::string_view label = domain.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    for (char c : label) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
      if (!ok) return false;
    }
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// core::SyntheticAddress, always a plain address: it cuts the local part at
// 64 bytes after trimming its dots, so a long id can leave a final dot
// (which GMime rejects, dropping the mailbox).
std::string SafeSyntheticAddress(std::string_view id) {
  std::string a = SyntheticAddress(id);
  if (IsPlainAddress(a)) return a;
  size_t at = a.rfind('@');
  std::string local = a.substr(0, at);
  while (!local.empty() && local.back() == '.') local.pop_back();
  if (local.empty()) local = "unknown";
  return local + a.substr(at);
}

void SetMailbox(const Person& p, Mailbox* m) {
  m->id = OneLineClean(p.id);
  m->name = DisplayName(p);
  m->address = IsPlainAddress(p.address) ? p.address : SafeSyntheticAddress(p.id);
}

// Cuts Unicode white space (U+2028, U+3000, no-break spaces, ...) off both
// ends of a file name: readers strip it (Python's email does), so a name
// that keeps it reads back differently.
std::string_view TrimUnicodeSpace(std::string_view s) {
  static constexpr std::string_view kSpaces[] = {
      " ", "\t", "\n", "\r", "\v", "\f", "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\x80",
      "\xE2\x80\x81", "\xE2\x80\x82", "\xE2\x80\x83", "\xE2\x80\x84", "\xE2\x80\x85", "\xE2\x80\x86",
      "\xE2\x80\x87", "\xE2\x80\x88", "\xE2\x80\x89", "\xE2\x80\x8A", "\xE2\x80\xA8", "\xE2\x80\xA9",
      "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
  for (bool cut = true; cut && !s.empty();) {
    cut = false;
    for (std::string_view sp : kSpaces) {
      if (s.substr(0, sp.size()) == sp) {
        s.remove_prefix(sp.size());
        cut = true;
      }
      if (s.size() >= sp.size() && s.substr(s.size() - sp.size()) == sp) {
        s.remove_suffix(sp.size());
        cut = true;
      }
    }
  }
  return s;
}

// core::SanitizeFileName, and no Unicode white space at either end (cutting
// it can uncover a leading dot or space, hence the rounds).
std::string SafeFileName(std::string_view name, const std::string& fallback) {
  std::string s = core::SanitizeFileName(name, "");
  for (int round = 0; round < 8; ++round) {
    std::string t = core::SanitizeFileName(TrimUnicodeSpace(s), "");
    if (t == s) break;
    s = std::move(t);
  }
  return s.empty() ? fallback : s;
}

struct AttachmentPlan {
  std::string filename;      // sanitized
  std::string content_type;
  const core::MediaRef* ref = nullptr;
};

void PlanAttachments(const core::Item& item, std::vector<AttachmentPlan>* out) {
  out->clear();
  std::unordered_set<std::string> taken;
  for (const auto& m : item.media) {
    if (!m.has_bytes()) continue;
    AttachmentPlan a;
    a.ref = &m;
    const std::string numbered = fmt::format("attachment-{}", out->size() + 1);
    std::string fallback = fmt::format("{}-{}", SafeFileName(m.role, "attachment"), out->size() + 1);
    if (!m.extension.empty()) fallback += "." + SafeFileName(m.extension, "bin");
    a.filename = SafeFileName(m.filename, SafeFileName(fallback, numbered));
    std::string ext = m.extension;
    size_t dot = a.filename.rfind('.');
    if (ext.empty() && dot != std::string::npos) ext = core::AsciiLower(a.filename.substr(dot + 1));
    a.content_type = GuessContentType(ext, std::string_view(m.bytes).substr(0, 16));
    if (m.stubbed) a.content_type = "text/plain; charset=utf-8";  // names and paths in UTF-8
    if (ext.empty()) {
      // A name without extension (call recordings): give it the sniffed type's,
      // so mail clients know how to open it.
      std::string_view sub = std::string_view(a.content_type).substr(a.content_type.find('/') + 1);
      if (sub == "amr" || sub == "jpeg" || sub == "png" || sub == "gif" || sub == "mp4" ||
          sub == "pdf" || sub == "zip" || sub == "wav" || sub == "silk") {
        a.filename += "." + std::string(sub == "jpeg" ? "jpg" : sub);
      }
    }
    // Two attachments with one name confuse every mail client: number them.
    const std::string base = a.filename;
    for (int n = 2; taken.count(a.filename) != 0; ++n) {
      size_t d = base.rfind('.');
      a.filename = d == std::string::npos || d == 0
                       ? fmt::format("{} ({})", base, n)
                       : fmt::format("{} ({}){}", base.substr(0, d), n, base.substr(d));
    }
    taken.insert(a.filename);
    out->push_back(std::move(a));
  }
}

std::string RawRecordName(const core::Item& item) {
  return fmt::format("wecom-record-{}.json", item.key.Hex().substr(0, 12));
}

std::string FormatSize(uint64_t n) {
  if (n < 1024) return fmt::format("{} bytes", n);
  if (n < 1024 * 1024) return fmt::format("{:.1f} KiB", n / 1024.0);
  return fmt::format("{:.1f} MiB", n / (1024.0 * 1024));
}

// &, <, >, " escaped, appended.
void AppendEscaped(std::string_view s, std::string* out) {
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char* rep;
    switch (s[i]) {
      case '&': rep = "&amp;"; break;
      case '<': rep = "&lt;"; break;
      case '>': rep = "&gt;"; break;
      case '"': rep = "&quot;"; break;
      default: continue;
    }
    out->append(s.substr(start, i - start)).append(rep);
    start = i + 1;
  }
  out->append(s.substr(start));
}

std::string Esc(std::string_view s) {
  std::string out;
  AppendEscaped(s, &out);
  return out;
}

// ---- bodies ----------------------------------------------------------------

void BuildBody(const RenderInput& in, const std::vector<AttachmentPlan>& atts, std::string* plain,
               std::string* html) {
  const core::Item& item = *in.item;
  std::string& p = *plain;
  std::string& h = *html;
  p.clear();
  h.clear();
  const std::string from = DisplayName(in.from);
  const std::string date = core::FormatUtcMillis(item.msgtime_ms);

  // Who and when.
  std::string who;
  if (item.is_group()) {
    who = fmt::format("{} in group {}", from, RoomLabel(item));
  } else {
    who = from + " -> ";
    if (in.to.empty()) {
      who += "(no recipients)";
    } else {
      AppendNameList(in.to, kMaxNamesInBody, &who);
    }
  }
  Append(&p, "{}\n{}\n\n", who, date);
  h += "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n";
  Append(&h, "<p><b>{}</b><br>\n<small>{}</small></p>\n", Esc(who), Esc(date));

  // The message itself.
  if (item.kind == core::ItemKind::kRecall) {
    std::string rid = OneLineClean(item.recalled_msgid);
    Append(&p, "{} recalled a message.\n", from);
    Append(&h, "<p>{} recalled a message.</p>\n", Esc(from));
    if (!rid.empty()) {
      auto when = TimeFromMsgId(rid);
      std::string when_text = when ? core::FormatUtcSeconds(*when) : "not given by the record";
      std::string mid = item.recalled_key ? MessageIdFor(*item.recalled_key) : "";
      Append(&p, "Recalled message: {}\nIt was sent: {}\n", rid, when_text);
      if (!mid.empty()) Append(&p, "Archived as: <mid:{}>\n", mid);
      Append(&h, "<p>Recalled message: <code>{}</code><br>\nIt was sent: {}", Esc(rid), Esc(when_text));
      if (!mid.empty()) Append(&h, "<br>\nArchived as: <a href=\"mid:{0}\">{0}</a>", Esc(mid));
      h += "</p>\n";
    }
  }
  if (!item.text.empty()) {
    std::string t = Clean(item.text, true);
    p += t;
    p += '\n';
    h += "<p>";
    std::string ht = Esc(t);
    size_t start = 0;
    for (size_t nl; (nl = ht.find('\n', start)) != std::string::npos; start = nl + 1) {
      h.append(ht, start, nl - start).append("<br>\n");
    }
    h.append(ht, start).append("</p>\n");
  }
  if (item.call) {
    const auto& c = *item.call;
    std::string line = "Call: " + OneLineClean(c.call_type);
    if (c.duration_s) Append(&line, ", duration {}", core::FormatDuration(*c.duration_s));
    if (c.start_s) Append(&line, ", started {}", core::FormatUtcSeconds(*c.start_s));
    if (c.end_s) Append(&line, ", ended {}", core::FormatUtcSeconds(*c.end_s));
    line += "\nParticipants: ";
    line += from;
    for (const auto& t : in.to) line.append(", ").append(DisplayName(t));
    p += "\n" + line + "\n";
    std::string hl = Esc(line);
    size_t nl = hl.find('\n');
    if (nl != std::string::npos) hl.replace(nl, 1, "<br>\n");
    h += "<p>" + hl + "</p>\n";
  }
  if (!item.entries.empty()) {
    p += "\n";
    h += "<ul>\n";
    for (const auto& e : item.entries) {
      std::string when = e.time_s ? core::FormatUtcSeconds(*e.time_s) + " " : "";
      std::string t = OneLineClean(e.text);
      std::string type = OneLineClean(e.type);
      Append(&p, "- {}[{}] {}\n", when, type, t);
      Append(&h, "<li><small>{}[{}]</small> {}</li>\n", Esc(when), Esc(type), Esc(t));
    }
    h += "</ul>\n";
  }
  if (!item.facts.empty()) {
    p += "\n";
    h += "<table>\n";
    for (const auto& f : item.facts) {
      std::string label = OneLineClean(f.label);
      std::string value = OneLineClean(f.value);
      Append(&p, "{}: {}\n", label, value);
      Append(&h, "<tr><td>{}</td><td>{}</td></tr>\n", Esc(label), Esc(value));
    }
    h += "</table>\n";
  }
  if (!atts.empty()) {
    p += "\nAttachments:\n";
    h += "<p>Attachments:</p>\n<ul>\n";
    for (const auto& a : atts) {
      std::string line = fmt::format("{} ({}, {})", a.filename, FormatSize(a.ref->size), a.content_type);
      p += "- " + line + "\n";
      h += "<li>" + Esc(line) + "</li>\n";
    }
    h += "</ul>\n";
  }
  // Everything that is missing or was repaired, in plain words.
  std::vector<std::string> problems;
  for (const auto& m : item.media) {
    if (!m.problem.empty()) {
      std::string name = OneLineClean(m.filename);
      problems.push_back(fmt::format("{}{}: {}", m.role, name.empty() ? "" : " " + name, m.problem));
    }
  }
  for (const auto& n : item.notes) problems.push_back(n);
  if (item.kind == core::ItemKind::kUnknown) {
    problems.push_back(fmt::format(
        "wxarchiver does not know the message type '{}'; the original record is attached",
        OneLineClean(item.msgtype)));
  }
  if (!problems.empty()) {
    p += "\nNotes:\n";
    h += "<p>Notes:</p>\n<ul>\n";
    for (const auto& pr : problems) {
      std::string t = OneLineClean(pr);
      p += "- " + t + "\n";
      h += "<li>" + Esc(t) + "</li>\n";
    }
    h += "</ul>\n";
  }
  // Source facts, for people reading the item without its headers.
  std::string src = fmt::format("WeChat/WeCom {} message, id {}", OneLineClean(item.msgtype),
                                OneLineClean(item.msgid));
  if (item.is_group()) src += ", group " + RoomLabel(item);
  p += "\n-- \n" + src + "\n";
  h += "<hr>\n<p><small>" + Esc(src) + "</small></p>\n</body></html>\n";
}

// ---- headers ---------------------------------------------------------------

// Every item of a conversation references one root, so clients thread them:
// the room for a group, else the sorted set of participants. Linear in the
// participants (a group message can name 20,000).
std::string ConversationId(const core::Item& item) {
  std::string basis;
  if (item.is_group()) {
    basis = "room\x1f" + item.roomid;
  } else {
    std::vector<std::string_view> ids;
    ids.reserve(item.to.size() + 1);
    if (!item.from.empty()) ids.push_back(item.from);
    for (const auto& t : item.to) {
      if (!t.empty()) ids.push_back(t);
    }
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    basis = "pair";
    for (std::string_view id : ids) basis.append("\x1f").append(id);
  }
  core::ItemKey k = core::ItemKey::For(item.source_kind + "-conversation", "", basis);
  return fmt::format("conv-{}@wxarchiver", k.Hex());
}

void AddField(std::vector<HeaderField>* fields, std::string_view name, std::string_view value) {
  std::string v = OneLineClean(value);
  if (v.empty()) return;
  fields->push_back({name, std::move(v)});
}

std::string JoinIds(const std::vector<std::string>& ids) {
  size_t n = 0;
  for (const auto& id : ids) n += id.size() + 2;
  std::string s;
  s.reserve(n);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) s += ", ";
    s += ids[i];
  }
  return s;
}

void ComposeRecipients(const RenderInput& in, std::vector<Mailbox>* to) {
  const core::Item& item = *in.item;
  if (!in.to.empty()) {
    to->resize(in.to.size());
    for (size_t i = 0; i < in.to.size(); ++i) SetMailbox(in.to[i], &(*to)[i]);
    return;
  }
  if (item.is_group()) {
    Person room{item.roomid, "Group " + RoomLabel(item), SafeSyntheticAddress("room-" + item.roomid)};
    to->resize(1);
    SetMailbox(room, &to->front());
    return;
  }
  // The mapper leaves the sender out of To; when the record names only the
  // sender (a call with tolist = [from]), the sender is the participant.
  bool names_someone = std::any_of(item.to.begin(), item.to.end(), [](const std::string& t) { return !t.empty(); });
  if (names_someone) {
    to->resize(1);
    SetMailbox(in.from, &to->front());
  } else {
    to->clear();  // undisclosed-recipients:;
  }
}

}  // namespace

void ComposeInto(const RenderInput& in, ComposedItem* out) {
  const core::Item& item = *in.item;
  out->key_hex = item.key.Hex();
  out->subject = SubjectFor(in);
  SetMailbox(in.from, &out->from);
  ComposeRecipients(in, &out->to);
  int64_t secs = item.msgtime_ms >= 0 ? item.msgtime_ms / 1000 : 0;
  out->date_s = std::min(secs, kMaxDateSeconds);
  out->message_id = MessageIdFor(item.key);

  // Threading: every item of a conversation references one conversation root,
  // so clients group them; a recall replies to the item it recalls.
  out->references.clear();
  out->references.push_back(ConversationId(item));
  out->in_reply_to.clear();
  if (item.kind == core::ItemKind::kRecall && item.recalled_key) {
    out->in_reply_to = MessageIdFor(*item.recalled_key);
    out->references.push_back(out->in_reply_to);
  }

  out->fields.clear();
  AddField(&out->fields, "X-WeChat-MsgId", item.msgid);
  AddField(&out->fields, "X-WeChat-MsgType", item.msgtype);
  AddField(&out->fields, "X-WeChat-Action", item.action);
  if (item.is_group()) AddField(&out->fields, "X-WeChat-RoomId", item.roomid);
  AddField(&out->fields, "X-WeChat-From", item.from);
  AddField(&out->fields, "X-WeChat-To", JoinIds(item.to));
  if (item.kind == core::ItemKind::kRecall) AddField(&out->fields, "X-WeChat-Recalled-MsgId", item.recalled_msgid);
  AddField(&out->fields, "X-Archive-Item", out->key_hex);

  std::vector<AttachmentPlan> atts;
  PlanAttachments(item, &atts);
  BuildBody(in, atts, &out->plain, &out->html);

  out->attachments.resize(atts.size());
  for (size_t i = 0; i < atts.size(); ++i) {
    ComposedAttachment& a = out->attachments[i];
    a.file_name = std::move(atts[i].filename);
    a.content_type = std::move(atts[i].content_type);
    a.data = atts[i].ref->bytes.data();
    a.size = atts[i].ref->bytes.size();
    a.raw_record = false;
  }
  if (item.attach_raw && !item.raw.empty()) {
    ComposedAttachment a;
    a.file_name = RawRecordName(item);
    // Sent as bytes (base64) either way: the exact record, including any
    // invalid UTF-8 it had.
    a.content_type = core::IsValidUtf8(item.raw) ? "application/json" : "application/octet-stream";
    a.data = item.raw.data();
    a.size = item.raw.size();
    a.raw_record = true;
    out->attachments.push_back(std::move(a));
  }
}

ComposedItem Compose(const RenderInput& in) {
  ComposedItem out;
  ComposeInto(in, &out);
  return out;
}

std::string MessageIdFor(const core::ItemKey& key) { return key.Hex() + "@wxarchiver"; }

std::string SubjectFor(const RenderInput& in) {
  const core::Item& item = *in.item;
  const std::string from = DisplayName(in.from);
  std::string_view what;
  switch (item.kind) {
    case core::ItemKind::kCall: what = "WeChat call"; break;
    case core::ItemKind::kRecall: what = "WeChat recall"; break;
    default: what = "WeChat"; break;
  }
  std::string s;
  if (item.is_group()) {
    s = fmt::format("{} group {}: {}", what, RoomLabel(item), from);
  } else {
    s = fmt::format("{}: {} -> ", what, from);
    if (in.to.empty()) {
      s += "(no recipients)";
    } else {
      AppendNameList(in.to, kMaxNamesInSubject, &s);
    }
  }
  if (item.kind == core::ItemKind::kCall && item.call) {
    if (item.call->duration_s) Append(&s, " ({})", core::FormatDuration(*item.call->duration_s));
  }
  std::string label = OneLineClean(item.label);
  if (!label.empty() && item.kind != core::ItemKind::kRecall) Append(&s, " [{}]", label);
  // One space between words even where a part was empty ("WeChat:  -> x").
  return core::TruncateUtf8(core::OneLine(s), kMaxSubjectBytes);
}

std::string GuessContentType(std::string_view extension, std::string_view head) {
  static const std::pair<const char*, const char*> kByExt[] = {
      {"jpg", "image/jpeg"}, {"jpeg", "image/jpeg"}, {"png", "image/png"}, {"gif", "image/gif"},
      {"webp", "image/webp"}, {"bmp", "image/bmp"}, {"heic", "image/heic"},
      {"amr", "audio/amr"}, {"mp3", "audio/mpeg"}, {"wav", "audio/wav"}, {"silk", "audio/silk"},
      {"m4a", "audio/mp4"}, {"mp4", "video/mp4"}, {"mov", "video/quicktime"},
      {"pdf", "application/pdf"}, {"zip", "application/zip"}, {"txt", "text/plain"},
      {"csv", "text/csv"}, {"json", "application/json"}, {"xml", "application/xml"},
      {"html", "text/html"}, {"htm", "text/html"},
      {"doc", "application/msword"}, {"xls", "application/vnd.ms-excel"},
      {"ppt", "application/vnd.ms-powerpoint"},
      {"docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
      {"xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
      {"pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
      {"rar", "application/vnd.rar"}, {"7z", "application/x-7z-compressed"},
      {"gz", "application/gzip"}, {"tar", "application/x-tar"},
  };
  std::string ext = core::AsciiLower(extension);
  for (const auto& [e, t] : kByExt) {
    if (ext == e) return t;
  }
  auto starts = [&](std::string_view magic) { return head.substr(0, magic.size()) == magic; };
  if (starts("\xFF\xD8\xFF")) return "image/jpeg";
  if (starts("\x89PNG")) return "image/png";
  if (starts("GIF8")) return "image/gif";
  if (starts("#!AMR")) return "audio/amr";
  if (starts("#!SILK") || starts("\x02#!SILK")) return "audio/silk";
  if (starts("ID3")) return "audio/mpeg";
  if (starts("RIFF") && head.size() >= 12 && head.substr(8, 4) == "WAVE") return "audio/wav";
  if (head.size() >= 8 && head.substr(4, 4) == "ftyp") return "video/mp4";
  if (starts("%PDF")) return "application/pdf";
  if (starts("PK\x03\x04")) return "application/zip";
  return "application/octet-stream";
}

std::vector<std::string> AttachmentFileNames(const core::Item& item) {
  std::vector<AttachmentPlan> atts;
  PlanAttachments(item, &atts);
  std::vector<std::string> names;
  for (auto& a : atts) names.push_back(std::move(a.filename));
  if (item.attach_raw && !item.raw.empty()) names.push_back(RawRecordName(item));
  return names;
}

uint64_t RenderedSizeLowerBound(const core::Item& item) {
  uint64_t total = 0;
  for (const auto& m : item.media) {
    if (!m.found()) continue;
    uint64_t b64 = (m.size + 2) / 3 * 4;
    total += b64 + (b64 / 76) * 2;  // CRLF after every 76 characters
  }
  return total;
}

}  // namespace wxa::mime
