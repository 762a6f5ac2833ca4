// Reader and strict self-verifier for Unicode PST files (wVer 23; NONE or
// PERMUTE encoding, so Outlook's own files open too).
//
// Open() maps the whole file read-only; every view and value returned is a
// copy, valid after the Reader is gone. Verify() checks what Outlook and
// scanpst check and the Linux readers do not: header, page and block CRCs and
// signatures, B-tree order and back-pointers, AMap bits against the actual
// allocations (and cbAMapFree), cRef against the references, data and
// subnode trees, heaps, BTHs, tables, and that folder tables mirror the
// objects (rows, counts, cell values). Not thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/status.h"
#include "formats/pst/pst_writer.h"

namespace wxa::pst {

struct FolderInfo {
  uint32_t nid = 0, parent_nid = 0;
  std::string name;
  std::string path;  // names from below the IPM subtree joined by '/', e.g. "WeChat Archiver"
  uint32_t content_count = 0, unread_count = 0;
  bool has_subfolders = false;
};

struct MessageRecord {
  uint32_t nid = 0;
  Message message;  // attachments carry data and size
  uint32_t flags = 0;
  uint32_t size = 0;  // PidTagMessageSize
};

struct VerifyReport {
  uint64_t pages = 0, blocks = 0, nodes = 0, folders = 0, messages = 0;
  std::vector<std::string> errors;  // empty when the file verifies
};

// A property value as stored: type plus raw little-endian bytes.
struct PropValue {
  uint16_t type = 0;
  std::string bytes;
};
using PropMap = std::map<uint16_t, PropValue>;

class Reader {
 public:
  static Result<std::unique_ptr<Reader>> Open(const std::string& path);
  ~Reader();

  // Strict verification. Returns OK, or Corruption naming the first problems
  // (all of them in *report when given).
  Status Verify(VerifyReport* report = nullptr) const;
  // Folders under the root, depth first (root and search folders excluded).
  Result<std::vector<FolderInfo>> Folders() const;
  // Message NIDs of a folder, in contents-table order.
  Result<std::vector<uint32_t>> MessageNids(uint32_t folder_nid) const;
  Result<MessageRecord> ReadMessage(uint32_t nid) const;
  // The raw property context of a top-level node (store, folder, message).
  Result<PropMap> ReadProperties(uint32_t nid) const;

  struct Impl;

 private:
  explicit Reader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace wxa::pst
