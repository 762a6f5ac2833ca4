#include "tests/mime/python_check.h"

#include <fmt/format.h>

#include "formats/core/hash.h"
#include "formats/core/json_writer.h"
#include "tests/test_util.h"

namespace wxa::mime::testing {

void PythonCheck::Add(const ComposedItem& c, const std::string& bytes) {
  std::string name = fmt::format("{:06}.eml", files_.size());
  std::string j;
  core::JsonWriter w(&j);
  w.BeginObject();
  w.Field("file", name).Field("subject", c.subject);
  w.Key("from").BeginObject().Field("name", c.from.name).Field("address", c.from.address).EndObject();
  w.Key("to").BeginArray();
  for (const auto& t : c.to) w.BeginObject().Field("name", t.name).Field("address", t.address).EndObject();
  w.EndArray();
  w.Field("date", c.date_s).Field("message_id", c.message_id).Field("in_reply_to", c.in_reply_to);
  w.Key("references").BeginArray();
  for (const auto& r : c.references) w.String(r);
  w.EndArray();
  w.Key("fields").BeginArray();
  for (const auto& f : c.fields) w.BeginArray().String(f.name).String(f.value).EndArray();
  w.EndArray();
  w.Field("plain", c.plain).Field("html", c.html);
  w.Key("attachments").BeginArray();
  for (const auto& a : c.attachments) {
    w.BeginObject().Field("name", a.file_name).Field("type", a.content_type);
    w.Field("sha256", core::ToHex(core::Sha256(a.bytes()))).EndObject();
  }
  w.EndArray();
  w.EndObject();
  if (!files_.empty()) json_ += ",";
  json_ += j;
  files_.push_back(name);
  bytes_.push_back(bytes);
}

std::string PythonCheck::Run(bool* ok) const {
  test::TempDir dir;
  for (size_t i = 0; i < files_.size(); ++i) test::WriteFile(dir / files_[i], bytes_[i]);
  test::WriteFile(dir / "composed.json", json_ + "]");
  std::string out;
  int rc = test::Run(fmt::format("{} {} {}", WXA_PYTHON,
                                 test::ShellQuote(test::SourcePath("tests/mime/check_composed.py")),
                                 test::ShellQuote(dir.path())),
                     &out);
  *ok = rc == 0 && out.find(fmt::format("checked {} messages, 0 failed", files_.size())) != std::string::npos;
  return out;
}

}  // namespace wxa::mime::testing
