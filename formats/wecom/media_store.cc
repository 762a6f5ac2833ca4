#include "formats/wecom/media_store.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/core/csv.h"
#include "formats/core/file.h"
#include "formats/core/hash.h"
#include "formats/core/text.h"

namespace wxa::wecom {

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

namespace {

bool IsMd5Hex(std::string_view s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return false;
  }
  return true;
}

}  // namespace

Result<MediaStore> MediaStore::Open(const std::string& media_dir, size_t max_cached) {
  MediaStore m;
  m.dir_ = media_dir;
  m.max_cached_ = std::max<size_t>(1, max_cached);
  m.have_dir_ = core::IsDirectory(media_dir);
  std::string index_path = core::JoinPath(media_dir, "index.csv");
  if (m.have_dir_ && core::PathExists(index_path)) {
    auto table = core::ReadCsvFile(index_path);
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
  }
  return m;
}

std::string MediaStore::LocalName(const core::MediaRef& ref, std::string* why) const {
  if (!ref.sdkfileid.empty()) {
    auto it = index_.find(ref.sdkfileid);
    if (it != index_.end()) return it->second;
  }
  if (!ref.md5sum.empty()) {
    if (IsMd5Hex(ref.md5sum)) return core::AsciiLower(ref.md5sum);
    // A bad md5sum is no reason to give up: fall back to the sdkfileid.
  }
  if (!ref.sdkfileid.empty()) {
    std::string name = ref.sdkfileid;
    for (char& c : name) {
      if (c == '+') c = '-';
      if (c == '/') c = '_';
    }
    if (!IsSafeRelativePath(name)) {
      *why = "sdkfileid is not usable as a file name";
      return {};
    }
    if (name.size() > 255) {
      *why = fmt::format(
          "sdkfileid is {} bytes, too long for a file name; list it in media/index.csv",
          name.size());
      return {};
    }
    return name;
  }
  *why = "record gives neither md5sum nor sdkfileid";
  return {};
}

MediaStore::Verdict MediaStore::Check(const std::string& rel, bool need_md5) {
  {
    std::lock_guard<std::mutex> lock(shared_->mu);
    auto it = shared_->cache.find(rel);
    if (it != shared_->cache.end() &&
        (!need_md5 || !it->second.md5_hex.empty() || !it->second.exists)) {
      return it->second;
    }
  }
  // Hash outside the lock: two threads may hash the same file once each at
  // worst, which is cheaper than serializing every media lookup.
  Verdict v;
  std::string path = core::JoinPath(dir_, rel);
  uint64_t size = 0;
  core::Status st = core::Env::Default()->Stat(path, &size);
  if (st.IsNotFound()) {
    v.exists = false;
  } else if (!st.ok()) {
    v.exists = true;
    v.error = st.ToString();
  } else {
    v.exists = true;
    v.size = size;
    if (need_md5) {
      auto mapped = core::MappedFile::Open(path);
      if (!mapped.ok()) {
        v.error = mapped.status().ToString();
      } else {
        v.md5_hex = core::ToHex(core::Md5(mapped->data()));
        v.size = mapped->size();
      }
    }
  }
  std::lock_guard<std::mutex> lock(shared_->mu);
  if (!v.md5_hex.empty()) {
    shared_->stats.files_verified++;
    shared_->stats.bytes_verified += v.size;
  }
  if (shared_->cache.size() >= max_cached_ && shared_->cache.find(rel) == shared_->cache.end()) {
    shared_->cache.clear();  // start over: cheaper than LRU bookkeeping per lookup
  }
  shared_->cache.insert_or_assign(rel, v);
  return v;
}

void MediaStore::Resolve(core::MediaRef& ref) {
  ref.path.clear();
  ref.problem.clear();
  ref.size = 0;
  ref.state = core::MediaState::kMissing;
  std::string why;
  std::string rel = LocalName(ref, &why);
  if (rel.empty()) {
    ref.problem = "media not found: " + why;
    return;
  }
  if (!have_dir_) {
    ref.problem = fmt::format("media not found: no media directory ({})", dir_);
    return;
  }
  const bool declared_md5 = IsMd5Hex(ref.md5sum);
  Verdict v = Check(rel, declared_md5);
  if (!v.exists && declared_md5 && !ref.extension.empty()) {
    // Tools that save "<md5><suffix>" (e.g. WxJava's examples).
    std::string alt = rel + "." + ref.extension;
    Verdict va = Check(alt, true);
    if (va.exists) {
      rel = alt;
      v = va;
    }
  }
  if (!v.exists) {
    ref.problem = fmt::format("media not found: media/{}", rel);
    return;
  }
  if (!v.error.empty()) {
    ref.problem = fmt::format("media unreadable: {}", v.error);
    return;
  }
  ref.path = core::JoinPath(dir_, rel);
  ref.size = v.size;
  ref.state = core::MediaState::kOk;
  std::vector<std::string> mismatches;
  if (ref.declared_size && *ref.declared_size != v.size) {
    mismatches.push_back(
        fmt::format("record says {} bytes, file has {}", *ref.declared_size, v.size));
  }
  if (declared_md5 && core::AsciiLower(ref.md5sum) != v.md5_hex) {
    mismatches.push_back(
        fmt::format("record says MD5 {}, file has {}", core::AsciiLower(ref.md5sum), v.md5_hex));
  }
  if (!mismatches.empty()) {
    ref.state = core::MediaState::kCorrupt;
    ref.problem = fmt::format("media corrupt (media/{}): {}; attached as found", rel,
                              fmt::join(mismatches, "; "));
  }
}

MediaStats MediaStore::stats() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  MediaStats s = shared_->stats;
  s.cached = shared_->cache.size();
  return s;
}

}  // namespace wxa::wecom
