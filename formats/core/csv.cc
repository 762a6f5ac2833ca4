#include "formats/core/csv.h"

#include <algorithm>

#include <fmt/format.h>

#include "formats/core/text.h"

namespace wxa::core {

int CsvTable::Column(std::initializer_list<std::string_view> names) const {
  for (std::string_view n : names) {
    for (size_t i = 0; i < header.size(); ++i) {
      if (header[i] == n) return static_cast<int>(i);
    }
  }
  return -1;
}

namespace {

char DetectSeparator(std::string_view text) {
  std::string_view first = text.substr(0, text.find('\n'));
  size_t commas = std::count(first.begin(), first.end(), ',');
  size_t semis = std::count(first.begin(), first.end(), ';');
  size_t tabs = std::count(first.begin(), first.end(), '\t');
  if (tabs > commas && tabs > semis) return '\t';
  if (semis > commas) return ';';
  return ',';
}

}  // namespace

Result<CsvTable> ParseCsv(std::string_view text, std::string_view name) {
  if (text.size() >= 3 && text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);
  const char sep = DetectSeparator(text);
  CsvTable table;
  bool have_header = false;
  size_t line = 1;
  size_t i = 0;
  while (i < text.size()) {
    CsvRow row;
    row.line = line;
    bool row_has_content = false;
    while (true) {
      std::string field;
      bool quoted = false;
      // Leading spaces before a quote are tolerated.
      size_t j = i;
      while (j < text.size() && (text[j] == ' ' || (text[j] == '\t' && sep != '\t'))) ++j;
      if (j < text.size() && text[j] == '"') {
        quoted = true;
        i = j + 1;
        const size_t quote_line = line;
        // Whole runs up to the next quote are appended at once; "" is one
        // quote inside the field.
        while (true) {
          const size_t q = text.find('"', i);
          if (q == std::string_view::npos) {
            return Status::Corruption(
                fmt::format("{}:{}: quoted field is never closed", name, quote_line));
          }
          const std::string_view run = text.substr(i, q - i);
          line += static_cast<size_t>(std::count(run.begin(), run.end(), '\n'));
          field.append(run);
          i = q + 1;
          if (i < text.size() && text[i] == '"') {
            field.push_back('"');
            ++i;
          } else {
            break;
          }
        }
        // Anything between the closing quote and the separator is kept, trimmed.
        while (i < text.size() && text[i] != sep && text[i] != '\n' && text[i] != '\r') {
          if (text[i] != ' ' && text[i] != '\t') field.push_back(text[i]);
          ++i;
        }
      } else {
        const size_t start = i;
        while (i < text.size() && text[i] != sep && text[i] != '\n' && text[i] != '\r') ++i;
        field.assign(Trim(text.substr(start, i - start)));
      }
      if (!field.empty() || quoted) row_has_content = true;
      row.fields.push_back(std::move(field));
      if (i < text.size() && text[i] == sep) {
        ++i;
        row_has_content = true;
        continue;
      }
      // End of row.
      if (i < text.size() && text[i] == '\r') ++i;
      if (i < text.size() && text[i] == '\n') {
        ++i;
        ++line;
      }
      break;
    }
    if (!row_has_content) continue;
    if (!have_header) {
      for (auto& f : row.fields) table.header.push_back(AsciiLower(Trim(f)));
      have_header = true;
    } else {
      table.rows.push_back(std::move(row));
    }
  }
  if (!have_header) return Status::Corruption(fmt::format("{}: empty CSV (no header row)", name));
  return table;
}

}  // namespace wxa::core
