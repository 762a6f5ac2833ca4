// Synthetic WeCom archive corpus, in the exact input format the importer
// reads: chatdata-YYYYMMDD.jsonl per day, media/, directory.csv, mapping.csv,
// mailboxes.txt. Deterministic for a seed (its own PRNG; no std distributions,
// whose output differs between library versions).
//
// The mix is meant to look like a real export: mostly text, then images,
// voice, files with a long-tailed size distribution (a few always over
// 10 MiB), video, calls, recalls, group chats, external contacts, robots, a
// few users without a mailbox, and in every day file a handful of broken
// records (malformed JSON, invalid UTF-8, raw control characters, missing and
// corrupt media, hostile file names, unknown types, a switch record).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "formats/core/status.h"

namespace wxa::gen {

struct GenOptions {
  std::string out;               // created if missing; must be empty or absent
  int users = 20;
  int days = 3;
  uint64_t seed = 1;
  double media_scale = 1.0;      // multiplies media sizes (huge files stay > 10 MiB)
  double messages_per_user_day = 20;
  bool broken_records = true;    // the bad-input cases; off for clean benchmark corpora
  bool huge_files = true;        // files over 10 MiB
  int64_t start_ms = 1700000000000;  // first day, UTC
};

struct GenSummary {
  uint64_t records = 0;
  uint64_t media_files = 0;
  uint64_t media_bytes = 0;
  uint64_t jsonl_bytes = 0;
  std::map<std::string, uint64_t> by_type;  // msgtype (or broken-record kind) -> count
};

Result<GenSummary> GenerateCorpus(const GenOptions& options);

}  // namespace wxa::gen
