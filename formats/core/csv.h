// A small RFC 4180 CSV reader for the user-facing CSVs (directory, mapping,
// media index). Tolerates what spreadsheets write: a UTF-8 BOM, CRLF or LF,
// quoted fields with "" escapes and embedded newlines, spaces around fields,
// blank lines, and ';' or tab separators when the header uses them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "formats/core/status.h"

namespace wxa::core {

// A row of an input CSV that was not used, and why.
struct CsvIssue {
  size_t line = 0;
  std::string reason;
};

struct CsvRow {
  size_t line = 0;                  // 1-based line where the row starts
  std::vector<std::string> fields;  // trimmed unless quoted
};

struct CsvTable {
  std::vector<std::string> header;  // lowercased, trimmed
  std::vector<CsvRow> rows;         // data rows (after the header), blank lines skipped
  // Index of the first header column equal to one of `names` (lowercase), or -1.
  int Column(std::initializer_list<std::string_view> names) const;
};

// Parses text; the first non-blank row is the header. Fails only on an
// unterminated quoted field.
Result<CsvTable> ParseCsv(std::string_view text, std::string_view name_for_errors);

}  // namespace wxa::core
