// Internal to engine/pipeline: one batch of records on its way through the
// import, from the read stage until the tracker has recorded every outcome.
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/index/index.h"
#include "engine/pipeline/report.h"
#include "formats/core/item.h"
#include "formats/wecom/record_reader.h"

namespace wxa::pst {
struct Message;
}

namespace wxa::pipeline {

// One (item, mailbox) delivery this run is responsible for.
struct DeliveryWork {
  enum class State : uint8_t {
    kWaiting,   // submitted (or about to be); no final outcome yet
    kDone,      // durable in the mailbox
    kFailed,    // recorded failed in the index (attempts and error kept)
    kReleased,  // never written: the intent is dropped
    kInDoubt,   // may have arrived: left as an intent for the next run to probe
  };
  std::string mailbox;
  State state = State::kWaiting;
  uint64_t id = 0;            // the sink's token
  uint32_t attempts = 0;      // submissions in this run
  std::string ref;            // kDone: remote reference
  std::string error;          // kFailed / kInDoubt: why
  bool already_there = false; // kDone: found in place (a stopped run's, or another tool's)
  bool maybe_arrived = false; // an attempt ended in doubt and no probe has said otherwise
  bool blocks_cursor = false; // a rerun must read this record again to retry it
};

// What the index and the report record of an item: all a record keeps of
// it once it is rendered, or known not to need rendering. A batch waits for
// its completions holding 2,048 of these (a PST run: up to 200,000 deliveries
// worth), not the items (672 bytes each before their strings).
struct ItemHead {
  core::ItemKey key;
  std::string msgid, msgtype, record_hash;
  int64_t msgtime_ms = 0;
  core::SourcePos pos;
  uint32_t file_index = UINT32_MAX;  // pos.file in the reader's file list, when known

  static ItemHead Of(const core::Item& item) {
    return {item.key, item.msgid, item.msgtype, item.record_hash, item.msgtime_ms, item.pos};
  }
};

// One record's way through the stages. The parallel stages fill it; the
// tracker reads it in source order.
struct RecordWork {
  enum class Kind : uint8_t { kSkipped, kItem, kSwitch, kMalformed } kind = Kind::kSkipped;
  std::optional<ItemHead> item;                // kItem: its identity and position
  std::unique_ptr<core::Item> full;            // the parsed item, until rendered (or not needed)
  std::vector<std::string> needed;             // mailboxes without a done delivery (plan)
  bool needed_unrecorded = true;               // the index had no record of any of them (plan)
  std::vector<std::string> claimed;            // mailboxes whose intent this run recorded (claim)
  std::vector<std::string> released;           // claimed but never submitted (oversize, render failure, stop)
  std::vector<DeliveryWork> deliveries;        // submitted to the sink
  std::shared_ptr<const std::string> bytes;    // the rendering, kept while a retry may need it
  // The same item as MAPI-style properties (sinks that want one: PST, Graph
  // extprops), kept with `bytes` while a retry may need it.
  std::shared_ptr<const pst::Message> structured;
  uint64_t structured_bytes = 0;               // its payload, counted with the bytes held
  // Outcome known without deliveries (few records: a pointer, not 144 bytes in each).
  std::unique_ptr<index::ItemRecord> item_record;
  std::string content_hash;                    // of the rendering (16 bytes)
  uint64_t size = 0;                           // rendered bytes
  uint64_t deliveries_present = 0;             // done before this run (or by another record)
  bool rendered = false;                       // the renderer ran for it
  bool settled = false;                        // nothing left to do (no deliveries)
  std::vector<std::pair<std::string, std::string>> unmapped;  // participant id, why
  std::vector<ReportEntry> entries;            // outcome entries (unmapped, oversize, malformed, ...)
  std::vector<ReportEntry> warnings;           // reported when imported (missing media, repaired, ...)
  size_t open = 0;                             // deliveries in kWaiting
};

struct Batch {
  uint64_t seq = 0;
  std::vector<wecom::RawRecord> records;
  std::vector<RecordWork> work;
  std::vector<wecom::FileIssue> file_issues;  // source files skipped while reading this batch
  size_t open = 0;          // deliveries in kWaiting across the batch
  bool sealed = false;      // left the TBB pipeline: nothing more is added
  uint64_t bytes_held = 0;  // rendered bytes kept for retries
  std::vector<core::ItemKey> claimed_keys;  // items this batch claimed (in-run conflict check)
  // The claim stage's commit of the batch's intents, answered in the deliver
  // stage (which renders ahead while it is in flight). claim_owner[k]: the
  // record (index into work) and mailbox (index into its needed) of claim k.
  std::future<Result<index::WriteResult>> claims;
  std::vector<std::pair<uint32_t, uint32_t>> claim_owner;
  bool claims_pending = false;
};

// The cursor of a source file for a sink: "<sink id>/<file name>".
std::string CursorKey(uint16_t sink, const std::string& file);
// Adds one report outcome to the counts.
void AddCounts(Counts& c, Outcome o);

}  // namespace wxa::pipeline
