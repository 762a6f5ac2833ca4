#include "formats/eml/eml_writer.h"

#include <fmt/format.h>

#include "formats/core/text.h"
#include "formats/maildir/maildir_writer.h"

namespace wxa::eml {

Result<std::string> FolderPath(std::string_view folder) {
  WXA_ASSIGN_OR_RETURN(auto levels, maildir::FolderLevels(folder));
  std::string out;
  for (std::string_view level : levels) {
    std::string safe = core::SanitizeFileName(level, "");
    if (safe.empty()) {
      return Status::InvalidArgument(
          fmt::format("folder name '{}': level '{}' is not a usable name", folder, level));
    }
    if (!out.empty()) out.push_back('/');
    out += safe;
  }
  return out;
}

}  // namespace wxa::eml
