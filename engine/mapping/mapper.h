// Participant -> mailbox, by the product's rule (ARCHITECTURE section 4):
//   1. the participant's mobile number in the custom mapping CSV (mobile,mailbox),
//      numbers compared in E.164 form;
//   2. else the participant's e-mail address from the user directory;
//   3. else unmapped.
// A candidate mailbox counts only if it is a valid address and, when a list of
// known mailboxes is given (--mailboxes), is on that list; otherwise the next
// rule is tried, as the product page says.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "formats/core/item.h"
#include "formats/core/status.h"
#include "formats/wecom/directory.h"

namespace wxa::core {
class Env;
}  // namespace wxa::core

namespace wxa::mapping {

// The E.164 form ("+8613800138000") of a phone number written any common
// way; numbers without a country code are read in `default_region` (ISO
// 3166 code, e.g. "CN"). nullopt when it is not a possible number.
std::optional<std::string> NormalizeE164(std::string_view raw, std::string_view default_region);

// A plausible mailbox address: ASCII dot-atom local part, a domain with at
// least two labels. Returns the address lowercased, or nullopt.
std::optional<std::string> NormalizeMailbox(std::string_view address);

struct MapperOptions {
  std::string default_region = "CN";
};

struct Resolution {
  std::string mailbox;   // lowercase address; empty when unmapped
  enum class Via { kNone, kMappingCsv, kDirectoryEmail } via = Via::kNone;
  std::string why_not;   // when unmapped: the reason, in words
  bool mapped() const { return !mailbox.empty(); }
};

class Mapper {
 public:
  // The mapping CSV and the known-mailbox list as bytes the caller read
  // (the import reads each once, and fingerprints what was parsed). An
  // empty name: that input was not given.
  struct Inputs {
    std::string mapping_csv_name, mapping_csv;
    std::string mailbox_list_name, mailbox_list;
  };
  // `directory` must outlive the mapper.
  static Result<Mapper> Parse(const wecom::Directory* directory, const Inputs& inputs, MapperOptions options);
  // The same, reading the files (core::ReadUserFile through `env`, null: the
  // default). Paths may be empty (not given).
  static Result<Mapper> Create(const wecom::Directory* directory, const std::string& mapping_csv,
                               const std::string& mailboxes_file, MapperOptions options,
                               core::Env* env = nullptr);

  // Thread-safe (read-only after Create).
  Resolution Resolve(std::string_view participant_id) const;

  // A participant as items show it: directory name, and the mapped
  // mailbox, else the directory e-mail, else a non-routable address.
  core::Person PersonFor(const std::string& id) const;
  // From and To of an item (To without the sender and without repeats).
  core::Participants ParticipantsFor(const core::Item& item) const;

  // Every mailbox a participant could map to (mapping CSV targets and
  // directory e-mails), so the target can say which it knows.
  std::vector<std::string> CandidateMailboxes() const;
  // Mailboxes the target says it does not know: they stop counting, and the
  // mapping falls back to the next rule (the product's rule). Recomputes
  // every participant's resolution.
  void SetUnknownToTarget(std::vector<std::string> unknown);

  // Rows of the mapping CSV or mailbox list that were not used, and why.
  const std::vector<core::CsvIssue>& issues() const { return issues_; }
  size_t mapping_rows() const { return by_mobile_.size(); }
  bool has_mailbox_list() const { return !known_.empty(); }
  // Distinct mailboxes the known-mailbox list holds (0 without a list).
  size_t known_mailboxes() const { return known_.size(); }

 private:
  Resolution ResolveEntry(const wecom::DirectoryEntry& e) const;
  bool Known(const std::string& mailbox) const {
    return (known_.empty() || known_.count(mailbox) != 0) && unknown_to_target_.count(mailbox) == 0;
  }

  const wecom::Directory* directory_ = nullptr;
  MapperOptions options_;
  std::unordered_map<std::string, std::string> by_mobile_;  // E.164 -> mailbox
  std::unordered_set<std::string> known_;                   // empty: every valid address is known
  std::unordered_map<std::string, Resolution> resolved_;    // userid -> resolution (precomputed)
  std::unordered_map<std::string, std::optional<std::string>> e164_;  // userid -> its mobile in E.164
  std::unordered_set<std::string> unknown_to_target_;      // the target said it does not know these
  std::vector<core::CsvIssue> issues_;
};

}  // namespace wxa::mapping
