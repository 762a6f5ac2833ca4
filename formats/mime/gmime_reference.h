// GMime as the reference for the direct serializer (tests and benchmarks
// only; library wxa_mime_reference, not linked into the product):
//  - RenderWithGMime builds a composed item with GMime's object model and
//    writes it, as the renderer did before the direct serializer (the
//    baseline the benchmarks compare against);
//  - ParseWithGMime reads any message back with GMime's parser;
//  - Compare says, field by field, where a parsed message differs from the
//    composed item it should carry.
// Call InitGMime() (renderer.h) first.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "formats/core/status.h"
#include "formats/mime/compose.h"

namespace wxa::mime::reference {

// The message GMime writes for `item` (CRLF, RFC 2231 parameters).
Result<std::string> RenderWithGMime(const ComposedItem& item);

struct ParsedMailbox {
  std::string name;
  std::string address;
};

struct ParsedAttachment {
  std::string content_type;   // "type/subtype" as GMime reads it
  std::string disposition;    // "attachment"
  std::string file_name;      // g_mime_part_get_filename(): what a GMime client shows
  // Each parameter form on its own, each decoded by GMime's parameter parser
  // (empty when the form is absent).
  std::string name_plain;       // Content-Type name= (a token, a quoted string or RFC 2047 words)
  std::string name_2231;        // Content-Type name*= / name*0*=...
  std::string filename_plain;   // Content-Disposition filename=
  std::string filename_2231;    // Content-Disposition filename*=
  std::string bytes;          // decoded content
};

struct ParsedMessage {
  std::vector<std::string> header_names;  // top-level header names, in order
  std::string subject;
  std::vector<ParsedMailbox> from;
  std::vector<ParsedMailbox> to;          // mailboxes, groups' members included
  std::vector<std::string> to_groups;     // names of groups in To
  int64_t date_s = -1;
  std::string message_id;
  std::string in_reply_to;
  std::vector<std::string> references;
  std::vector<std::pair<std::string, std::string>> x_fields;  // X-* headers, decoded
  std::string structure;  // "multipart/mixed(multipart/alternative(text/plain,text/html),...)"
  std::string plain;      // decoded content of the text parts (CRLF line ends)
  std::string html;
  std::string plain_charset;
  std::string html_charset;
  std::vector<ParsedAttachment> attachments;
};

Result<ParsedMessage> ParseWithGMime(std::string_view message);

struct CompareOptions {
  // Expect each non-ASCII file name in both parameter forms (the direct
  // serializer); GMime's own writer gives only RFC 2231.
  bool dual_file_names = true;
  // Text bodies decode with CRLF line ends (the direct serializer). GMime's
  // writer keeps LF inside base64 text parts: compare ignoring CR there.
  bool exact_line_ends = true;
};

// Every difference between the composed item and the parsed message, one
// line each; empty when GMime read back exactly what was composed.
std::vector<std::string> Compare(const ComposedItem& want, const ParsedMessage& got,
                                 const CompareOptions& options = {});

// Wire-format problems: lines over 998 bytes, bare CR or LF, 8-bit bytes,
// no header/body separator. Also reports the longest header line.
struct WireCheck {
  std::vector<std::string> problems;
  size_t longest_header_line = 0;
  size_t longest_line = 0;
};
WireCheck CheckWireFormat(std::string_view message);

}  // namespace wxa::mime::reference
