// The user directory exported from WeCom: who each participant id is.
// CSV with a header row: userid,name,mobile,email (column names are matched
// case-insensitively; common synonyms such as "user_id", "phone", "mail" work).
#pragma once

#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/core/csv.h"
#include "formats/core/status.h"

namespace wxa::core {
class Env;
}  // namespace wxa::core

namespace wxa::wecom {

struct DirectoryEntry {
  std::string userid;
  std::string name;
  std::string mobile;  // as written in the CSV; normalized by the mapper
  std::string email;
};

using core::CsvIssue;

class Directory {
 public:
  Directory() = default;
  // Reads `path` with core::ReadUserFile through `env` (null: the default).
  static Result<Directory> Load(const std::string& path, core::Env* env = nullptr);
  static Result<Directory> Parse(std::string_view csv_text, std::string_view name_for_errors);

  // Null when the id is not in the directory. Valid while the Directory lives.
  const DirectoryEntry* Find(std::string_view userid) const;
  size_t size() const { return entries_.size(); }
  const std::unordered_map<std::string, DirectoryEntry>& entries() const { return entries_; }
  const std::vector<CsvIssue>& issues() const { return issues_; }
  void Add(DirectoryEntry e);

 private:
  std::unordered_map<std::string, DirectoryEntry> entries_;
  std::vector<CsvIssue> issues_;
};

// Kind of a participant id, from WeCom's id conventions.
enum class IdKind { kEmployee, kExternal, kRobot };
IdKind ClassifyId(std::string_view id);  // wo.../wm... external, wb... robot

}  // namespace wxa::wecom
