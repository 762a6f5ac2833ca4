#include "formats/wecom/directory.h"

#include <fmt/format.h>

#include "formats/core/csv.h"
#include "formats/core/file.h"
#include "formats/core/text.h"

namespace wxa::wecom {

Result<Directory> Directory::Load(const std::string& path, core::Env* env) {
  auto text = core::ReadUserFile(env, path);
  if (!text.ok()) return text.status().WithContext("user directory");
  return Parse(*text, path);
}

Result<Directory> Directory::Parse(std::string_view csv_text, std::string_view name) {
  auto table = core::ParseCsv(csv_text, name);
  if (!table.ok()) return table.status().WithContext("user directory");
  int c_id = table->Column({"userid", "user_id", "user id", "id", "wecom_userid"});
  int c_name = table->Column({"name", "display_name", "displayname", "display name"});
  int c_mobile = table->Column({"mobile", "phone", "mobile_number", "mobile number", "telephone"});
  int c_email = table->Column({"email", "e-mail", "mail", "email_address", "email address"});
  if (c_id < 0) {
    return core::Status::InvalidArgument(fmt::format(
        "user directory {}: no 'userid' column in the header (expected userid,name,mobile,email)",
        name));
  }
  Directory d;
  auto field = [](const core::CsvRow& r, int c) -> std::string {
    return (c >= 0 && static_cast<size_t>(c) < r.fields.size()) ? r.fields[c] : std::string();
  };
  for (const auto& row : table->rows) {
    DirectoryEntry e;
    e.userid = field(row, c_id);
    e.name = core::OneLine(field(row, c_name));
    e.mobile = field(row, c_mobile);
    e.email = std::string(core::Trim(field(row, c_email)));
    if (e.userid.empty()) {
      d.issues_.push_back({row.line, "row has no userid"});
      continue;
    }
    if (d.entries_.count(e.userid) != 0) {
      d.issues_.push_back({row.line, fmt::format("duplicate userid '{}': first row kept", e.userid)});
      continue;
    }
    d.entries_.emplace(e.userid, std::move(e));
  }
  return d;
}

const DirectoryEntry* Directory::Find(std::string_view userid) const {
  auto it = entries_.find(std::string(userid));
  return it == entries_.end() ? nullptr : &it->second;
}

void Directory::Add(DirectoryEntry e) {
  std::string id = e.userid;
  entries_.insert_or_assign(std::move(id), std::move(e));
}

IdKind ClassifyId(std::string_view id) {
  // External ids are long opaque tokens ("wmErxtDgAA9AW32YyyuYRimKr7D1KWlw");
  // the length test keeps an employee called "woody" an employee.
  if (id.size() >= 16 && id[0] == 'w') {
    if (id[1] == 'o' || id[1] == 'm') return IdKind::kExternal;
    if (id[1] == 'b') return IdKind::kRobot;
  }
  return IdKind::kEmployee;
}

}  // namespace wxa::wecom
