// `wxarchiver verify`: what the target holds against what the index says is
// done, per mailbox: the index's done count, the target's count, the
// Message-IDs the index claims but the target lacks (missing), and those the
// target holds more than once (duplicated). Items of other origins in the
// folder are counted, not judged.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/sinks/sink.h"

namespace wxa::pipeline {

struct VerifyOptions {
  std::string index_dir;  // required
  std::string target;     // as given to import
  std::function<Result<std::unique_ptr<sinks::Sink>>(const sinks::Target&)> make_sink;
  size_t max_listed = 20;  // Message-IDs listed per mailbox and problem (all are counted)
};

struct MailboxVerify {
  std::string mailbox;
  uint64_t index_done = 0;    // deliveries the index records done
  uint64_t target_count = 0;  // messages in the target's folder
  uint64_t missing_count = 0;
  uint64_t duplicated_count = 0;
  uint64_t others = 0;        // messages the index does not know (other tools, other runs)
  std::vector<std::string> missing;     // first max_listed
  std::vector<std::string> duplicated;  // first max_listed
  std::string error;          // the target could not list this mailbox
};

struct VerifyReport {
  std::string target;
  std::string index_dir;
  std::vector<MailboxVerify> mailboxes;
  uint64_t missing = 0, duplicated = 0, errors = 0;
  bool clean() const { return missing == 0 && duplicated == 0 && errors == 0; }
};

Result<VerifyReport> RunVerify(const VerifyOptions& o);
std::string VerifyText(const VerifyReport& r);
std::string VerifyJson(const VerifyReport& r);

}  // namespace wxa::pipeline
