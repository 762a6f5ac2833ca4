#include "tests/mime/corpus_items.h"

#include <filesystem>
#include <vector>

#include <fmt/format.h>

#include "formats/wecom/media_store.h"
#include "formats/wecom/parser.h"
#include "formats/wecom/record_reader.h"
#include "tools/gen/corpus_gen.h"

namespace wxa::mime::testing {

Result<std::unique_ptr<ItemSet>> ItemSet::Load(const std::string& source_dir, const std::string& directory_csv,
                                               const std::string& mapping_csv, const std::string& mailboxes,
                                               const std::string& corp, uint64_t max_media_bytes) {
  auto set = std::make_unique<ItemSet>();
  if (!directory_csv.empty()) {
    WXA_ASSIGN_OR_RETURN(wecom::Directory d, wecom::Directory::Load(directory_csv));
    set->directory_ = std::make_unique<wecom::Directory>(std::move(d));
  } else {
    set->directory_ = std::make_unique<wecom::Directory>();
  }
  WXA_ASSIGN_OR_RETURN(mapping::Mapper m, mapping::Mapper::Create(set->directory_.get(), mapping_csv, mailboxes, {}));
  set->mapper_ = std::make_unique<mapping::Mapper>(std::move(m));
  WXA_ASSIGN_OR_RETURN(wecom::MediaStore media, wecom::MediaStore::Open(source_dir));
  WXA_ASSIGN_OR_RETURN(wecom::RecordReader reader, wecom::RecordReader::Open(source_dir));
  wecom::RecordParser parser({corp});
  std::vector<wecom::RawRecord> recs;
  while (true) {
    recs.clear();
    WXA_ASSIGN_OR_RETURN(bool more, reader.NextBatch(1000, 64 << 20, &recs));
    if (!more) break;
    for (const auto& rec : recs) {
      auto parsed = parser.Parse(rec, reader.files()[rec.file_index]);
      if (!parsed.ok() || parsed->kind != wecom::Parsed::Kind::kItem) continue;
      LoadedItem& li = set->items_.emplace_back();
      li.item = std::move(parsed->item);
      li.name = fmt::format("{:02}-{}", rec.line, li.item.msgtype);
      for (auto& ref : li.item.media) {
        media.Resolve(ref);
        // kTooLarge leaves the ref found but unread: rendered without it.
        (void)media.Load(ref, max_media_bytes);
      }
      core::Participants who = set->mapper_->ParticipantsFor(li.item);
      li.input = RenderInput{&li.item, std::move(who.from), std::move(who.to)};
    }
  }
  return set;
}

Result<std::unique_ptr<ItemSet>> ItemSet::Golden() {
  const std::string dir = std::string(WXA_SOURCE_DIR) + "/tests/data/golden";
  return Load(dir, dir + "/directory.csv", dir + "/mapping.csv", "", "golden", 1 << 30);
}

Result<std::unique_ptr<ItemSet>> ItemSet::Generated(const std::string& dir, int users, int days, uint64_t seed,
                                                    double media_scale) {
  gen::GenOptions o;
  o.out = dir;
  o.users = users;
  o.days = days;
  o.seed = seed;
  o.media_scale = media_scale;
  o.huge_files = false;
  WXA_ASSIGN_OR_RETURN(gen::GenSummary summary, gen::GenerateCorpus(o));
  (void)summary;
  return Load(dir, dir + "/directory.csv", dir + "/mapping.csv", dir + "/mailboxes.txt", "gen", 64 << 20);
}

}  // namespace wxa::mime::testing
