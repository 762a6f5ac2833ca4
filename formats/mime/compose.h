// Item -> composed message (ARCHITECTURE section 5): everything a message
// says (subject, people, date, ids, threading, source headers, bodies,
// attachments), decided once, with no MIME syntax and no GMime. The MIME
// serializer (serializer.h) writes it as RFC 5322 bytes; a PST writer can
// read the same fields directly.
//
// Pure and deterministic: the same input composes the same item, and every
// value is already clean (valid UTF-8; single-line values have no control
// characters or line breaks), so no writer has to clean again.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/core/item.h"

namespace wxa::mime {

using core::Person;
using core::SyntheticAddress;

struct RenderInput {
  const core::Item* item = nullptr;  // not owned; must outlive the render (and the composed item)
  Person from;
  std::vector<Person> to;
};

// A person as a message names them.
struct Mailbox {
  std::string id;       // the WeCom id, single-line (may be empty)
  std::string name;     // display name, single-line; the id when the name is unknown; may be empty
  std::string address;  // an ASCII addr-spec (dot-atom@domain), never empty
};

// A header the message carries besides the standard ones.
struct HeaderField {
  std::string_view name;  // a string literal (static storage)
  std::string value;      // single-line, not empty
};

struct ComposedAttachment {
  std::string file_name;     // sanitized (no separators or controls), unique in the item; UTF-8
  std::string content_type;  // "type/subtype", lowercase ASCII
  // The bytes, not owned: a MediaRef::bytes or the Item::raw of the input
  // item, valid while that item lives unchanged.
  const char* data = nullptr;
  size_t size = 0;
  bool raw_record = false;   // the source record itself (unknown or repaired records)
  std::string_view bytes() const { return {data, size}; }
};

struct ComposedItem {
  std::string key_hex;       // the item key (32 hex digits): MIME boundaries derive from it
  std::string subject;       // single-line, at most 200 bytes
  Mailbox from;
  // The recipients. Never empty for a message with other participants; an
  // item whose only participant is its sender lists the sender. Empty only
  // when the record names nobody: written as "undisclosed-recipients:;".
  std::vector<Mailbox> to;
  int64_t date_s = 0;        // Unix seconds (UTC), in [0, 253402300799] (years 1970..9999)
  std::string message_id;    // without angle brackets
  std::string in_reply_to;   // without angle brackets; empty when none
  std::vector<std::string> references;  // without angle brackets, the conversation root first
  std::vector<HeaderField> fields;      // X-WeChat-* and X-Archive-Item, in writing order
  std::string plain;         // text/plain body, LF line ends
  std::string html;          // text/html body, LF line ends
  std::vector<ComposedAttachment> attachments;  // media in record order, then the raw record
};

// Composes `in` (in.item must not be null).
ComposedItem Compose(const RenderInput& in);
// The same into *out, reusing its strings' and vectors' storage (one
// ComposedItem per thread keeps composing free of most allocations).
void ComposeInto(const RenderInput& in, ComposedItem* out);

// "<32 hex>@wxarchiver" (without angle brackets) for an item key.
std::string MessageIdFor(const core::ItemKey& key);
// The Subject header text (before RFC 2047 encoding).
std::string SubjectFor(const RenderInput& in);
// Content type for an attachment: by extension, then by the first bytes.
std::string GuessContentType(std::string_view extension, std::string_view head);
// The attachment file names Render uses, in order: media with bytes, then the
// raw record when attached.
std::vector<std::string> AttachmentFileNames(const core::Item& item);
// Lower bound of the rendered size: the base64 size of every attachment.
// An item whose bound exceeds a limit is oversize without rendering it.
uint64_t RenderedSizeLowerBound(const core::Item& item);

}  // namespace wxa::mime
