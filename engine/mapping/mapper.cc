#include "engine/mapping/mapper.h"

#include <phonenumbers/phonenumberutil.h>

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "formats/core/csv.h"
#include "formats/core/file.h"
#include "formats/core/text.h"

namespace wxa::mapping {

using i18n::phonenumbers::PhoneNumber;
using i18n::phonenumbers::PhoneNumberUtil;

std::optional<std::string> NormalizeE164(std::string_view raw, std::string_view default_region) {
  std::string s(core::Trim(raw));
  // Spreadsheets turn "+8613800138000" into "8.6138E+12" or "8613800138000.0";
  // only the latter is recoverable.
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  if (s.empty()) return std::nullopt;
  const PhoneNumberUtil* util = PhoneNumberUtil::GetInstance();
  PhoneNumber pn;
  if (util->Parse(s, std::string(default_region), &pn) != PhoneNumberUtil::NO_PARSING_ERROR) {
    return std::nullopt;
  }
  if (!util->IsPossibleNumber(pn)) return std::nullopt;
  std::string out;
  util->Format(pn, PhoneNumberUtil::E164, &out);
  return out;
}

std::optional<std::string> NormalizeMailbox(std::string_view address) {
  std::string a = core::AsciiLower(core::Trim(address));
  // "Name <addr>" from address books: take the part in angle brackets.
  size_t lt = a.rfind('<');
  if (lt != std::string::npos && !a.empty() && a.back() == '>') a = a.substr(lt + 1, a.size() - lt - 2);
  if (a.rfind("mailto:", 0) == 0) a = a.substr(7);
  size_t at = a.rfind('@');
  if (at == std::string::npos || at == 0 || at + 1 >= a.size() || a.size() > 254) return std::nullopt;
  std::string_view local(a.data(), at), domain(a.data() + at + 1, a.size() - at - 1);
  if (local.size() > 64) return std::nullopt;
  static constexpr std::string_view kAtext = "!#$%&'*+-/=?^_`{|}~";
  if (local.front() == '.' || local.back() == '.' || local.find("..") != std::string_view::npos) {
    return std::nullopt;
  }
  for (char c : local) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
              kAtext.find(c) != std::string_view::npos;
    if (!ok) return std::nullopt;
  }
  size_t labels = 0, start = 0;
  while (start <= domain.size()) {
    size_t dot = domain.find('.', start);
    std::string_view label = domain.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return std::nullopt;
    for (char c : label) {
      if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return std::nullopt;
    }
    ++labels;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  if (labels < 2) return std::nullopt;
  return a;
}

Result<Mapper> Mapper::Create(const wecom::Directory* directory, const std::string& mapping_csv,
                              const std::string& mailboxes_file, MapperOptions options, core::Env* env) {
  Inputs in;
  if (!mailboxes_file.empty()) {
    auto text = core::ReadUserFile(env, mailboxes_file);
    if (!text.ok()) return text.status().WithContext("mailbox list");
    in.mailbox_list_name = mailboxes_file;
    in.mailbox_list = std::move(*text);
  }
  if (!mapping_csv.empty()) {
    auto text = core::ReadUserFile(env, mapping_csv);
    if (!text.ok()) return text.status().WithContext("mapping CSV");
    in.mapping_csv_name = mapping_csv;
    in.mapping_csv = std::move(*text);
  }
  return Parse(directory, in, std::move(options));
}

Result<Mapper> Mapper::Parse(const wecom::Directory* directory, const Inputs& inputs, MapperOptions options) {
  Mapper m;
  m.directory_ = directory;
  m.options_ = std::move(options);
  // A supported region has a country calling code; 0 means unknown. (Not
  // GetSupportedRegions: that builds a set of ~245 strings per call.)
  if (PhoneNumberUtil::GetInstance()->GetCountryCodeForRegion(m.options_.default_region) == 0) {
    return Status::InvalidArgument(
        fmt::format("unknown default region '{}' (expected an ISO 3166 code such as CN, US, GB)",
                    m.options_.default_region));
  }

  if (!inputs.mailbox_list_name.empty()) {
    std::string_view rest = inputs.mailbox_list;
    size_t line = 0;
    while (!rest.empty()) {
      size_t nl = rest.find('\n');
      std::string_view l = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      ++line;
      if (line == 1 && l.substr(0, 3) == "\xEF\xBB\xBF") l.remove_prefix(3);
      // One address per line; extra CSV columns and '#' comments are ignored.
      l = l.substr(0, l.find_first_of(",;\t#"));
      l = core::Trim(l);
      if (l.empty()) continue;
      auto addr = NormalizeMailbox(l);
      if (!addr) {
        if (line == 1) continue;  // a header row such as "mailbox" or "PrimarySmtpAddress"
        m.issues_.push_back({line, fmt::format("mailbox list: '{}' is not a valid address",
                                               core::OneLine(l))});
        continue;
      }
      m.known_.insert(*addr);
    }
    if (m.known_.empty()) {
      return Status::InvalidArgument(
          fmt::format("mailbox list {} holds no valid address", inputs.mailbox_list_name));
    }
  }

  if (!inputs.mapping_csv_name.empty()) {
    auto table = core::ParseCsv(inputs.mapping_csv, inputs.mapping_csv_name);
    if (!table.ok()) return table.status().WithContext("mapping CSV");
    int c_mobile = table->Column({"mobile", "mobile number", "mobile_number", "phone",
                                  "phone number", "user's mobile number", "number"});
    int c_mailbox = table->Column({"mailbox", "email", "e-mail", "mail", "address",
                                   "mailbox address", "upn", "smtp", "primarysmtpaddress"});
    if (c_mobile < 0 || c_mailbox < 0) {
      return Status::InvalidArgument(fmt::format(
          "mapping CSV {}: header must name a mobile column and a mailbox column "
          "(expected: mobile,mailbox)",
          inputs.mapping_csv_name));
    }
    for (const auto& row : table->rows) {
      auto field = [&](int c) {
        return static_cast<size_t>(c) < row.fields.size() ? row.fields[c] : std::string();
      };
      std::string raw_mobile = field(c_mobile), raw_mailbox = field(c_mailbox);
      auto e164 = NormalizeE164(raw_mobile, m.options_.default_region);
      if (!e164) {
        m.issues_.push_back({row.line, fmt::format("mapping CSV: '{}' is not a phone number",
                                                   core::OneLine(raw_mobile))});
        continue;
      }
      auto mailbox = NormalizeMailbox(raw_mailbox);
      if (!mailbox) {
        m.issues_.push_back({row.line, fmt::format("mapping CSV: '{}' is not a valid mailbox address",
                                                   core::OneLine(raw_mailbox))});
        continue;
      }
      auto [it, inserted] = m.by_mobile_.emplace(*e164, *mailbox);
      if (!inserted && it->second != *mailbox) {
        m.issues_.push_back({row.line, fmt::format("mapping CSV: {} is mapped twice; the first row "
                                                   "({}) is used", *e164, it->second)});
      }
    }
  }

  if (directory != nullptr) {
    // Each mobile goes through libphonenumber once: SetUnknownToTarget
    // resolves everyone again from this cache.
    if (!m.by_mobile_.empty()) {
      for (const auto& [id, entry] : directory->entries()) {
        if (!entry.mobile.empty()) m.e164_.emplace(id, NormalizeE164(entry.mobile, m.options_.default_region));
      }
    }
    for (const auto& [id, entry] : directory->entries()) m.resolved_.emplace(id, m.ResolveEntry(entry));
  }
  return m;
}

Resolution Mapper::ResolveEntry(const wecom::DirectoryEntry& e) const {
  Resolution r;
  std::vector<std::string> why;
  if (!e.mobile.empty() && !by_mobile_.empty()) {
    auto cached = e164_.find(e.userid);
    const std::optional<std::string> e164 =
        cached != e164_.end() ? cached->second : NormalizeE164(e.mobile, options_.default_region);
    if (!e164) {
      why.push_back(fmt::format("mobile '{}' is not a phone number", core::OneLine(e.mobile)));
    } else if (auto it = by_mobile_.find(*e164); it != by_mobile_.end()) {
      if (Known(it->second)) {
        r.mailbox = it->second;
        r.via = Resolution::Via::kMappingCsv;
        return r;
      }
      why.push_back(fmt::format("mapping CSV gives {}, which is not a known mailbox{}", it->second,
                                unknown_to_target_.count(it->second) ? " of the target" : ""));
    } else {
      why.push_back(fmt::format("mobile {} is not in the mapping CSV", *e164));
    }
  }
  if (e.email.empty()) {
    why.push_back("the directory has no e-mail address");
  } else if (auto mb = NormalizeMailbox(e.email); !mb) {
    why.push_back(fmt::format("directory e-mail '{}' is not a valid address", core::OneLine(e.email)));
  } else if (!Known(*mb)) {
    why.push_back(fmt::format("directory e-mail {} is not a known mailbox{}", *mb,
                              unknown_to_target_.count(*mb) ? " of the target" : ""));
  } else {
    r.mailbox = *mb;
    r.via = Resolution::Via::kDirectoryEmail;
    return r;
  }
  r.why_not = fmt::format("{}", fmt::join(why, "; "));
  return r;
}

Resolution Mapper::Resolve(std::string_view participant_id) const {
  auto it = resolved_.find(std::string(participant_id));
  if (it != resolved_.end()) return it->second;
  Resolution r;
  switch (wecom::ClassifyId(participant_id)) {
    case wecom::IdKind::kExternal: r.why_not = "external contact (not in the user directory)"; break;
    case wecom::IdKind::kRobot: r.why_not = "robot (not in the user directory)"; break;
    default: r.why_not = "not in the user directory"; break;
  }
  return r;
}

core::Person Mapper::PersonFor(const std::string& id) const {
  core::Person p;
  p.id = id;
  const wecom::DirectoryEntry* e = directory_ != nullptr ? directory_->Find(id) : nullptr;
  p.name = (e != nullptr && !e->name.empty()) ? e->name : id;
  Resolution r = Resolve(id);
  if (r.mapped()) {
    p.address = r.mailbox;
  } else if (e != nullptr) {
    if (auto a = NormalizeMailbox(e->email)) p.address = *a;
  }
  if (p.address.empty()) p.address = core::SyntheticAddress(id);
  return p;
}

std::vector<std::string> Mapper::CandidateMailboxes() const {
  std::set<std::string> out;
  for (const auto& [mobile, mb] : by_mobile_) out.insert(mb);
  if (directory_ != nullptr) {
    for (const auto& [id, e] : directory_->entries()) {
      if (auto mb = NormalizeMailbox(e.email)) out.insert(*mb);
    }
  }
  if (!known_.empty()) {
    for (auto it = out.begin(); it != out.end();) it = known_.count(*it) ? std::next(it) : out.erase(it);
  }
  return {out.begin(), out.end()};
}

void Mapper::SetUnknownToTarget(std::vector<std::string> unknown) {
  unknown_to_target_ = {unknown.begin(), unknown.end()};
  resolved_.clear();
  if (directory_ != nullptr) {
    for (const auto& [id, entry] : directory_->entries()) resolved_.emplace(id, ResolveEntry(entry));
  }
}

core::Participants Mapper::ParticipantsFor(const core::Item& item) const {
  core::Participants in;
  in.from = PersonFor(item.from);
  std::vector<std::string> seen{item.from};
  for (const auto& id : item.to) {
    if (std::find(seen.begin(), seen.end(), id) != seen.end()) continue;
    seen.push_back(id);
    in.to.push_back(PersonFor(id));
  }
  return in;
}

}  // namespace wxa::mapping
