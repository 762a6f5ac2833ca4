// EML trees: one RFC 5322 file per item,
//   <root>/<mailbox>/<folder>/<unix seconds>.<32 hex>.wxa.eml
// The writing itself is maildir::MailFolder with Layout::kEml; this header
// holds what is EML-specific: how a folder name becomes a directory path.
#pragma once

#include <string>
#include <string_view>

#include "formats/core/status.h"

namespace wxa::eml {

// A directory path for a folder name: levels split on '/', each level made
// safe for a file system ('.'-leading and control characters replaced).
Result<std::string> FolderPath(std::string_view folder);

}  // namespace wxa::eml
