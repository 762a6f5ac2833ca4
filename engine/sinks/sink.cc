#include "engine/sinks/sink.h"

#include <climits>
#include <cstdlib>

#include <fmt/format.h>

#include "formats/core/text.h"

namespace wxa::sinks {

const char* TargetKindName(Target::Kind k) {
  switch (k) {
    case Target::Kind::kMaildir: return "maildir";
    case Target::Kind::kEml: return "eml";
    case Target::Kind::kPst: return "pst";
    case Target::Kind::kImap: return "imap";
    case Target::Kind::kImaps: return "imaps";
    case Target::Kind::kGraph: return "graph";
    case Target::Kind::kNull: return "null";
  }
  return "?";
}

const char* CompletionKindName(Completion::Kind k) {
  switch (k) {
    case Completion::Kind::kDone: return "done";
    case Completion::Kind::kItemBad: return "item_bad";
    case Completion::Kind::kMailboxBad: return "mailbox_bad";
    case Completion::Kind::kSinkBad: return "sink_bad";
    case Completion::Kind::kTransient: return "transient";
  }
  return "?";
}

namespace {

constexpr std::string_view kTargetForms =
    "maildir:DIR, eml:DIR, pst:DIR, imap://HOST[:PORT], imaps://HOST[:PORT], graph: or null:";

Result<Target> ParseHostPort(Target t, std::string_view rest) {
  while (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (rest.empty()) {
    return Status::InvalidArgument(fmt::format("target '{}' names no host", t.spec));
  }
  if (rest.find('/') != std::string_view::npos || rest.find('@') != std::string_view::npos ||
      rest.find('?') != std::string_view::npos) {
    return Status::InvalidArgument(fmt::format(
        "target '{}': give only HOST[:PORT] (credentials and folders have their own flags)", t.spec));
  }
  std::string_view host = rest, port;
  if (rest.front() == '[') {  // [IPv6]:port
    size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      return Status::InvalidArgument(fmt::format("target '{}': unclosed '['", t.spec));
    }
    host = rest.substr(1, close - 1);
    std::string_view after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return Status::InvalidArgument(fmt::format("target '{}': bad port", t.spec));
      port = after.substr(1);
    }
  } else if (size_t colon = rest.rfind(':'); colon != std::string_view::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (host.empty()) return Status::InvalidArgument(fmt::format("target '{}' names no host", t.spec));
  t.host = core::AsciiLower(host);
  t.port = t.kind == Target::Kind::kImaps ? 993 : 143;
  if (!port.empty()) {
    if (!core::AllDigits(port) || port.size() > 5 || std::stoul(std::string(port)) == 0 ||
        std::stoul(std::string(port)) > 65535) {
      return Status::InvalidArgument(fmt::format("target '{}': port must be 1-65535", t.spec));
    }
    t.port = static_cast<uint16_t>(std::stoul(std::string(port)));
  }
  return t;
}

}  // namespace

Result<Target> ParseTarget(std::string_view spec) {
  Target t;
  t.spec = std::string(spec);
  auto starts = [&](std::string_view p) { return spec.substr(0, p.size()) == p; };
  if (starts("imaps://")) {
    t.kind = Target::Kind::kImaps;
    return ParseHostPort(std::move(t), spec.substr(8));
  }
  if (starts("imap://")) {
    t.kind = Target::Kind::kImap;
    return ParseHostPort(std::move(t), spec.substr(7));
  }
  size_t colon = spec.find(':');
  if (colon == std::string_view::npos) {
    return Status::InvalidArgument(fmt::format("target '{}' must be one of {}", spec, kTargetForms));
  }
  std::string_view kind = spec.substr(0, colon), rest = spec.substr(colon + 1);
  if (kind == "graph" || kind == "null") {
    if (!rest.empty()) {
      return Status::InvalidArgument(fmt::format(
          "target '{}': '{}:' takes nothing after the colon (its settings have their own flags)", spec, kind));
    }
    t.kind = kind == "graph" ? Target::Kind::kGraph : Target::Kind::kNull;
    return t;
  }
  if (kind == "maildir") {
    t.kind = Target::Kind::kMaildir;
  } else if (kind == "eml") {
    t.kind = Target::Kind::kEml;
  } else if (kind == "pst") {
    t.kind = Target::Kind::kPst;
  } else {
    return Status::InvalidArgument(
        fmt::format("target kind '{}' is not supported (supported: {})", kind, kTargetForms));
  }
  std::string dir(rest);
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (dir.empty()) return Status::InvalidArgument(fmt::format("target '{}' names no directory", spec));
  if (dir.find('\0') != std::string::npos) return Status::InvalidArgument("target directory has a NUL byte");
  t.dir = std::move(dir);
  return t;
}

std::string Target::Canonical() const {
  switch (kind) {
    case Kind::kMaildir:
    case Kind::kEml:
    case Kind::kPst: {
      std::string d = dir;
      char buf[PATH_MAX];
      if (::realpath(dir.c_str(), buf) != nullptr) d = buf;
      return fmt::format("{}:{}", TargetKindName(kind), d);
    }
    case Kind::kImap:
    case Kind::kImaps:
      return fmt::format("{}://{}:{}", TargetKindName(kind), host, port);
    case Kind::kGraph:
    case Kind::kNull:
      return fmt::format("{}:", TargetKindName(kind));
  }
  return spec;
}

void Sink::CheckMailboxes(const std::vector<std::string>& candidates, CheckFn done) {
  std::vector<std::pair<std::string, MailboxVerdict>> out;
  out.reserve(candidates.size());
  for (const auto& c : candidates) out.emplace_back(c, MailboxVerdict::kUnknowable);
  done(std::move(out));
}

void Sink::Probe(const Delivery& d, ProbeFn done) { done(d.id, ProbeResult{}); }

void Sink::Inventory(const std::string& mailbox, InventoryFn done) {
  done(Status::Unsupported(fmt::format("this target ({}) cannot list what {} holds", kind(), mailbox)));
}

std::optional<std::string> MessageIdOfHeader(std::string_view message) {
  // Header lines up to the first empty line, CRLF or LF.
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos < message.size()) {
    size_t eol = message.find('\n', pos);
    std::string_view line = message.substr(pos, eol == std::string_view::npos ? std::string_view::npos : eol - pos);
    pos = eol == std::string_view::npos ? message.size() : eol + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;
    lines.push_back(line);
  }
  for (size_t i = 0; i < lines.size(); ++i) {
    std::string_view line = lines[i];
    if (line.size() < 11 || core::AsciiLower(line.substr(0, 11)) != "message-id:") continue;
    std::string v(core::Trim(line.substr(11)));
    for (size_t j = i + 1; j < lines.size() && (lines[j].front() == ' ' || lines[j].front() == '\t'); ++j) {
      v += std::string(core::Trim(lines[j]));  // a folded value
    }
    if (!v.empty() && v.front() == '<') v.erase(0, 1);
    if (!v.empty() && v.back() == '>') v.pop_back();
    return v;
  }
  return std::nullopt;
}

Completion::Kind ClassifyLocalError(const Status& s) {
  switch (s.code()) {
    case Status::Code::kInvalidArgument:  // a symlink, not a directory, a bad name
    case Status::Code::kNotFound:         // a directory vanished under us
    case Status::Code::kAlreadyExists:
      return Completion::Kind::kMailboxBad;
    default:
      break;
  }
  switch (s.os_errno()) {
    case EACCES:
    case EPERM:
    case ENAMETOOLONG:
    case ELOOP:
    case ENOTDIR:
    case EISDIR:
    case EEXIST:
    case EMLINK:
    case ENOENT:
    case EXDEV:  // a mount inside the mailbox (its cur/ apart from its tmp/)
      return Completion::Kind::kMailboxBad;
    default:
      // ENOSPC, EDQUOT, EIO, EROFS, EMFILE, ENOMEM and what we do not know:
      // nothing else can be written either.
      return Completion::Kind::kSinkBad;
  }
}

}  // namespace wxa::sinks
