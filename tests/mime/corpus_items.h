// Items to render, loaded the way an import loads them: records parsed by
// wecom::RecordParser, media resolved and read by wecom::MediaStore, people
// mapped by mapping::Mapper. Shared by tests/mime and bench/mime.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "engine/mapping/mapper.h"
#include "formats/core/item.h"
#include "formats/core/status.h"
#include "formats/mime/compose.h"
#include "formats/wecom/directory.h"

namespace wxa::mime::testing {

struct LoadedItem {
  std::string name;  // "<line>-<msgtype>" (the golden file's stem for the fixture)
  core::Item item;
  RenderInput input;  // points into `item`
};

class ItemSet {
 public:
  // Every record of `source_dir` (records *.jsonl, media/, and the
  // directory and mapping CSVs named, which may be empty). Malformed
  // records and switch records are skipped; media over max_media_bytes stay
  // unread (as the engine's size limit would leave them).
  static Result<std::unique_ptr<ItemSet>> Load(const std::string& source_dir, const std::string& directory_csv,
                                               const std::string& mapping_csv, const std::string& mailboxes,
                                               const std::string& corp, uint64_t max_media_bytes);
  // tests/data/golden (38 items, one per msgtype case).
  static Result<std::unique_ptr<ItemSet>> Golden();
  // A corpus from the generator (tools/gen), written under `dir`.
  static Result<std::unique_ptr<ItemSet>> Generated(const std::string& dir, int users, int days, uint64_t seed,
                                                    double media_scale);

  // Stable addresses (a deque): inputs point into their items.
  std::deque<LoadedItem>& items() { return items_; }

 private:
  std::unique_ptr<wecom::Directory> directory_;
  std::unique_ptr<mapping::Mapper> mapper_;
  std::deque<LoadedItem> items_;
};

}  // namespace wxa::mime::testing
