// The JSON run report: counts per outcome, per-mailbox deliveries, and one
// entry per item that was not imported (unmapped, oversize, malformed) or was
// imported with a warning (missing or corrupt media, repaired record,
// unknown type). Entries are streamed to a side file while the run goes, so
// memory stays flat however many there are; Finish() assembles the report
// and renames it into place. The side file of a run that was killed holds
// the entries it wrote (the run flushes them before its index moves a
// cursor past their records): the next run with the same report path
// carries them into its report, marked "from_interrupted_run".
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "formats/core/file.h"
#include "formats/core/item.h"

namespace wxa::pipeline {

enum class Outcome : uint8_t {
  kUnmapped,       // no participant maps to a valid mailbox: not imported
  kOversize,       // over the size limit: not imported
  kMalformed,      // the record could not be read: not imported
  kFailed,         // rendering failed, or a delivery failed: not (fully) imported
  kSwitch,         // action=switch: not a message, report only
  kMissingMedia,   // imported, but a media file is missing
  kCorruptMedia,   // imported, but a media file does not match the record
  kRepaired,       // imported, but the record had to be repaired
  kUnknownType,    // imported generically with the raw record attached
  kInputIssue,     // a row of an input CSV that was not used
  kConflict,       // the msgid was seen before with other content: not delivered
  kStubbed,        // imported, with attachments replaced by stubs (oversize policy stub)
};
const char* OutcomeName(Outcome o);
bool IsNotImported(Outcome o);

struct ReportEntry {
  Outcome outcome = Outcome::kMalformed;
  std::string reason;
  core::SourcePos pos;           // file empty for CSV issues (then `input` names the file)
  std::string input;             // for kInputIssue: which CSV
  std::string msgid;
  std::string msgtype;
  std::string item_key;          // hex, when known
  uint64_t size = 0;             // rendered size (oversize)
  std::vector<std::string> participants;  // for unmapped: who was in it
};

struct Counts {
  uint64_t records = 0;            // non-blank lines read
  uint64_t items = 0;              // records that are items (not switch, not malformed)
  uint64_t imported = 0;           // items with at least one new delivery
  uint64_t already_present = 0;    // items whose every delivery existed before
  uint64_t deliveries = 0;         // (item, mailbox) written by this run
  uint64_t deliveries_present = 0; // (item, mailbox) found already delivered
  uint64_t deliveries_failed = 0;  // (item, mailbox) the target refused or could not take
  uint64_t retries = 0;            // deliveries submitted again after a transient failure
  uint64_t bytes_written = 0;
  uint64_t unmapped = 0;
  uint64_t oversize = 0;
  uint64_t malformed = 0;
  uint64_t failed = 0;
  uint64_t switches = 0;
  uint64_t missing_media = 0;
  uint64_t corrupt_media = 0;
  uint64_t repaired = 0;
  uint64_t unknown_type = 0;
  uint64_t input_issues = 0;
  uint64_t conflicts = 0;
  uint64_t stubbed = 0;            // items imported with stubs in place of attachments
  uint64_t source_bytes = 0;       // bytes of *.jsonl read by this run
  uint64_t source_total = 0;       // bytes of *.jsonl this run set out to read (progress, ETA)
  uint64_t rendered = 0;           // items the renderer ran for (0 on a rerun of done work)
};

class ReportWriter {
 public:
  // An empty path keeps counts only (no file). Otherwise the report goes to
  // `path` at Finish(); entries stream to "<path>.entries.tmp" meanwhile.
  // Every write goes through `env` (null: Env::Default()), so fault tests
  // reach the report too.
  static Result<ReportWriter> Open(const std::string& path, core::Env* env = nullptr);
  ReportWriter() = default;
  ReportWriter(ReportWriter&&) = default;
  ReportWriter& operator=(ReportWriter&&) = delete;  // (a live writer would lose its lock and entries)
  ~ReportWriter();

  // Not thread-safe: called from the pipeline's serial stage.
  Status Add(const ReportEntry& e);
  uint64_t entries() const { return entries_; }
  // Writes the entries added so far to the side file: a process killed
  // after it loses none of them. `durable` also fsyncs the file (and, the
  // first time, its directory, where it was created or renamed): a power
  // cut after it loses none of them either. The pipeline asks for that
  // before its index moves a cursor past the entries' records.
  Status Flush(bool durable = false);
  // Entries carried over from a killed run's side file (Open).
  uint64_t carried() const { return carried_; }

  // `summary_json` is a JSON object's members without braces (written by the
  // caller), placed before "entries".
  Status Finish(const std::string& summary_json);
  const std::string& path() const { return path_; }

 private:
  core::Env* env_ = nullptr;
  std::string path_;
  std::string entries_path_;
  core::UniqueFd lock_fd_;  // "<path>.lock", locked from Open until Finish (or the end)
  core::UniqueFd entries_fd_;
  std::string buf_;
  uint64_t entries_ = 0;
  uint64_t carried_ = 0;
  Status write_error_;  // a failed write to the side file: no report from it
  bool unsynced_ = false;       // written since the last fsync
  bool dir_synced_ = false;     // the side file's directory entry is durable
  // This run's id (32 hex digits), on the side file's first line and in the
  // report: a side file whose id the report at `path` carries was reported
  // whole (a run killed between the report's rename and the side file's
  // removal), and is removed instead of carried over.
  std::string run_id_;
  Status CarryOver(int in, const std::string& stale, int to, const std::string& to_path);
  Status FinishLocked(const std::string& summary_json);
  void Unlock();
  Status WriteWhole(const std::string& summary_json, const std::string& tmp);
};

}  // namespace wxa::pipeline
