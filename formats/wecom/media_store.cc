#include "formats/wecom/media_store.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/core/csv.h"
#include "formats/core/hash.h"
#include "formats/core/text.h"

namespace wxa::wecom {

namespace {

constexpr std::string_view kMediaDir = "media";
// media/index.csv lists one row per media file: a generous bound that still
// keeps a hostile multi-gigabyte file from being read into memory.
constexpr uint64_t kMaxIndexCsvBytes = 1ull << 30;
constexpr size_t kMaxFileNameBytes = 255;

bool IsMd5Hex(std::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
  }
  return true;
}

std::string MediaPath(std::string_view rel) { return fmt::format("{}/{}", kMediaDir, rel); }

}  // namespace

bool IsSafeRelativePath(std::string_view s) {
  if (s.empty() || s.front() == '/') return false;
  size_t start = 0;
  while (start <= s.size()) {
    size_t slash = s.find('/', start);
    std::string_view comp = s.substr(start, slash == std::string_view::npos ? s.npos : slash - start);
    if (comp.empty() || comp == "." || comp == "..") return false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7F || c == '\\') return false;
  }
  return true;
}

std::string SdkFileIdName(std::string_view sdkfileid) {
  std::string name(sdkfileid);
  for (char& c : name) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  if (name.size() > kMaxFileNameBytes) return core::ToHex(core::Sha256(sdkfileid));
  if (!IsSafeRelativePath(name)) return {};
  return name;
}

Result<MediaStore> MediaStore::Open(const std::string& source_dir, core::Env* env) {
  MediaStore m;
  m.env_ = env != nullptr ? env : core::Env::Default();
  m.media_dir_ = core::JoinPath(source_dir, kMediaDir);
  WXA_ASSIGN_OR_RETURN(m.source_, m.env_->OpenRoot(source_dir));
  {
    // media/ itself must be a real directory inside the source.
    Status d = m.source_.CheckDirectory(kMediaDir);
    if (d.ok()) {
      m.have_dir_ = true;
    } else if (!d.IsNotFound()) {
      return d.WithContext("media directory");
    }
  }
  if (!m.have_dir_) return m;
  const std::string index_rel = MediaPath("index.csv");
  const std::string index_path = core::JoinPath(source_dir, index_rel);
  struct stat st {};
  auto fd = m.env_->OpenFileBeneath(m.source_, index_rel, &st);
  if (!fd.ok()) {
    if (fd.status().IsNotFound()) return m;
    return fd.status().WithContext("media index");
  }
  std::string text;
  WXA_RETURN_IF_ERROR(core::ReadFd(m.env_, fd->get(), index_path, kMaxIndexCsvBytes, &text));
  auto table = core::ParseCsv(text, index_path);
  if (!table.ok()) return table.status().WithContext("media index");
  int c_id = table->Column({"sdkfileid", "fileid"});
  int c_path = table->Column({"path", "file", "filename"});
  if (c_id < 0 || c_path < 0) {
    return core::Status::InvalidArgument(
        fmt::format("media index {}: header must have 'sdkfileid' and 'path'", index_path));
  }
  for (const auto& row : table->rows) {
    if (row.fields.size() <= static_cast<size_t>(std::max(c_id, c_path))) {
      m.issues_.push_back({row.line, "row has too few fields"});
      continue;
    }
    const std::string& id = row.fields[c_id];
    const std::string& path = row.fields[c_path];
    if (!IsSafeRelativePath(path)) {
      m.issues_.push_back({row.line, fmt::format("path '{}' leaves media/ or is not relative",
                                                 core::OneLine(path))});
      continue;
    }
    m.index_.insert_or_assign(id, path);
  }
  return m;
}

std::string MediaStore::LocalName(const core::MediaRef& ref, std::string* why) const {
  if (!ref.sdkfileid.empty()) {
    auto it = index_.find(ref.sdkfileid);
    if (it != index_.end()) return it->second;
  }
  // A bad md5sum is no reason to give up: fall back to the sdkfileid.
  if (IsMd5Hex(ref.md5sum)) return core::AsciiLower(ref.md5sum);
  if (!ref.sdkfileid.empty()) {
    std::string name = SdkFileIdName(ref.sdkfileid);
    if (name.empty()) *why = "sdkfileid is not usable as a file name";
    return name;
  }
  *why = "record gives neither md5sum nor sdkfileid";
  return {};
}

void MediaStore::Resolve(core::MediaRef& ref) const {
  ref.path.clear();
  ref.problem.clear();
  ref.bytes.clear();
  ref.size = 0;
  ref.state = core::MediaState::kMissing;
  std::string why;
  std::string rel = LocalName(ref, &why);
  if (rel.empty()) {
    ref.problem = "media not found: " + why;
    return;
  }
  if (!have_dir_) {
    ref.problem = fmt::format("media not found: no media directory ({})", media_dir_);
    return;
  }
  struct stat st {};
  auto fd = env_->OpenFileBeneath(source_, MediaPath(rel), &st);
  if (!fd.ok() && fd.status().IsNotFound() && IsMd5Hex(ref.md5sum) && !ref.extension.empty() &&
      rel == core::AsciiLower(ref.md5sum)) {
    // Tools that save "<md5><suffix>" (e.g. WxJava's examples).
    std::string alt = rel + "." + ref.extension;
    auto fa = env_->OpenFileBeneath(source_, MediaPath(alt), &st);
    if (fa.ok() || !fa.status().IsNotFound()) {
      rel = alt;
      fd = std::move(fa);
    }
  }
  if (!fd.ok()) {
    const Status& s = fd.status();
    if (s.IsNotFound()) {
      ref.problem = fmt::format("media not found: {}", MediaPath(rel));
    } else if (s.code() == Status::Code::kInvalidArgument) {
      ref.problem = fmt::format("media not read: {}", s.message());
    } else {
      ref.problem = fmt::format("media unreadable: {}", s.message());
    }
    return;
  }
  ref.path = MediaPath(rel);
  ref.size = static_cast<uint64_t>(st.st_size);
  ref.state = core::MediaState::kFound;
}

// How a file read differs from its record: `got` bytes of the `at_open`
// it had when opened, their MD5 (hex; empty when the record gives none).
static std::vector<std::string> Mismatches(const core::MediaRef& ref, uint64_t at_open, uint64_t got,
                                           std::string_view md5_hex) {
  std::vector<std::string> out;
  if (got != at_open) {
    out.push_back(fmt::format("the file changed while it was read ({} bytes when opened, {} read)", at_open, got));
  }
  if (ref.declared_size && *ref.declared_size != got) {
    out.push_back(fmt::format("record says {} bytes, file has {}", *ref.declared_size, got));
  }
  if (!md5_hex.empty() && core::AsciiLower(ref.md5sum) != md5_hex) {
    out.push_back(fmt::format("record says MD5 {}, file has {}", core::AsciiLower(ref.md5sum), md5_hex));
  }
  return out;
}

Result<MediaStore::FileDigest> MediaStore::Digest(const core::MediaRef& ref) const {
  const std::string full = core::JoinPath(source_.path(), ref.path);
  struct stat st {};
  WXA_ASSIGN_OR_RETURN(core::UniqueFd fd, env_->OpenFileBeneath(source_, ref.path, &st));
  FileDigest d;
  d.size_at_open = static_cast<uint64_t>(st.st_size);
  core::Sha256Stream sha;
  core::Md5Stream md5;
  std::string buf(1 << 20, '\0');
  bool grew = false;
  while (true) {
    // One byte past the size at open says it grew; no more is read (a file
    // still being written is not followed).
    const uint64_t want = std::min<uint64_t>(buf.size(), d.size_at_open + 1 - d.size);
    WXA_ASSIGN_OR_RETURN(size_t n, env_->Read(fd.get(), buf.data(), static_cast<size_t>(want), full));
    if (n == 0) break;
    if (d.size + n > d.size_at_open) {
      n = static_cast<size_t>(d.size_at_open - d.size);  // hashed up to the size at open
      grew = true;
    }
    sha.Update(std::string_view(buf.data(), n));
    md5.Update(std::string_view(buf.data(), n));
    d.size += n;
    if (grew) break;
  }
  d.sha256_hex = core::ToHex(sha.Finish());
  d.md5_hex = core::ToHex(md5.Finish());
  std::vector<std::string> problems =
      Mismatches(ref, d.size_at_open, d.size, IsMd5Hex(ref.md5sum) ? d.md5_hex : std::string());
  if (grew) {
    // Its first bytes may match the record, but the file kept is no longer
    // what the stub's SHA-256 names.
    problems.insert(problems.begin(),
                    fmt::format("the file grew while it was read ({} bytes when opened, those hashed)",
                                d.size_at_open));
  }
  d.problem = fmt::format("{}", fmt::join(problems, "; "));
  return d;
}

Status MediaStore::Load(core::MediaRef& ref, uint64_t max_bytes) const {
  if (ref.state != core::MediaState::kFound) return Status::Ok();
  const std::string full = core::JoinPath(source_.path(), ref.path);
  auto missing = [&](const Status& s) {
    ref.state = core::MediaState::kMissing;
    ref.bytes.clear();
    ref.problem = fmt::format("media {}: {}", s.IsNotFound() ? "not found" : "not read", s.message());
    return Status::Ok();
  };
  struct stat st {};
  auto fd = env_->OpenFileBeneath(source_, ref.path, &st);
  if (!fd.ok()) return missing(fd.status());
  const uint64_t at_open = static_cast<uint64_t>(st.st_size);
  if (at_open > max_bytes) {
    ref.size = at_open;
    return Status::TooLarge(fmt::format("{} has {} bytes", ref.path, at_open));
  }
  std::string bytes;
  bytes.reserve(at_open);
  Status rs = core::ReadFd(env_, fd->get(), full, max_bytes, &bytes);
  if (rs.code() == Status::Code::kTooLarge) {
    // It grew past the limit while read: the caller rejects the item.
    ref.size = max_bytes + 1;
    return rs;
  }
  if (!rs.ok()) return missing(rs);
  ref.bytes = std::move(bytes);
  ref.size = ref.bytes.size();
  ref.state = core::MediaState::kOk;
  const std::vector<std::string> mismatches = Mismatches(
      ref, at_open, ref.size, IsMd5Hex(ref.md5sum) ? core::ToHex(core::Md5(ref.bytes)) : std::string());
  if (!mismatches.empty()) {
    ref.state = core::MediaState::kCorrupt;
    ref.problem = fmt::format("media corrupt ({}): {}; attached as read", ref.path,
                              fmt::join(mismatches, "; "));
  }
  return Status::Ok();
}

}  // namespace wxa::wecom
