#include "formats/pst/pst_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>

#include "formats/core/file.h"
#include "formats/core/hash.h"
#include "formats/pst/ltp_writer.h"
#include "formats/pst/ndb_writer.h"
#include "formats/pst/pst_format.h"

namespace wxa::pst {

using namespace fmt;  // NOLINT

namespace {

// Table schemas: columns in the creation order Outlook's empty store shows
// (iBit order); TableSchema derives the row layout from it.
const std::vector<uint32_t> kHierarchyTemplate = {  // 0x60D
    0x67F20003, 0x67F30003, 0x3001001F, 0x36020003, 0x36030003, 0x360A000B, 0x0E300102,
    0x0E330014, 0x0E340102, 0x0E380003, 0x3613001F, 0x66350003, 0x66360003};
const std::vector<uint32_t> kContentsTemplate = {  // 0x60E
    0x67F20003, 0x67F30003, 0x0E170003, 0x001A001F, 0x0E070003, 0x00170003, 0x0042001F,
    0x0037001F, 0x0E060040, 0x00390040, 0x0E080003, 0x0E04001F, 0x0E03001F, 0x0057000B,
    0x0058000B, 0x00360003, 0x10970003, 0x0070001F, 0x00710102, 0x30130102, 0x65C60003,
    0x30080040, 0x0E300102, 0x0E330014, 0x0E340102, 0x0E3D0102, 0x0E3C0102, 0x0E380003};
const std::vector<uint32_t> kFaiTemplate = {  // 0x60F
    0x67F20003, 0x67F30003, 0x0E170003, 0x001A001F, 0x0E070003, 0x3001001F, 0x70030003,
    0x70040102, 0x70050102, 0x7006001F, 0x70070003, 0x6800001F, 0x6803000B, 0x68051003,
    0x682F001F};
const std::vector<uint32_t> kSearchContentsTemplate = {  // 0x610
    0x67F20003, 0x67F30003, 0x67F10003, 0x0E05001F, 0x0E170003, 0x001A001F, 0x0E070003,
    0x00170003, 0x0042001F, 0x0037001F, 0x0E060040, 0x0E080003, 0x0E04001F, 0x0E03001F,
    0x0057000B, 0x0058000B, 0x00360003, 0x0E2A000B, 0x30080040};
const std::vector<uint32_t> kReceiveFolderTable = {  // 0x62B
    0x67F20003, 0x67F30003, 0x66050003, 0x001A001F};
const std::vector<uint32_t> kOutgoingQueueTable = {  // 0x64C
    0x67F20003, 0x67F30003, 0x0E140003, 0x0E100003, 0x00390040};
const std::vector<uint32_t> kAttachmentTable = {  // 0x671
    0x67F20003, 0x67F30003, 0x370B0003, 0x0E200003, 0x37050003, 0x3704001F};
const std::vector<uint32_t> kRecipientTable = {  // 0x692
    0x67F20003, 0x67F30003, 0x0E0F000B, 0x3002001F, 0x3003001F, 0x0FFF0102, 0x3001001F,
    0x0C150003, 0x300B0102, 0x0FF90102, 0x0FFE0003, 0x39000003, 0x3A40000B, 0x39FF001F};
const std::vector<uint32_t> kTable6B6 = {  // 0x6B6
    0x67F20003, 0x67F30003, 0x0E330014, 0x0E370102, 0x0E380003};
const std::vector<uint32_t> kTable6D7 = {  // 0x6D7
    0x67F20003, 0x67F30003, 0x0E3E0102, 0x0E310102, 0x0E300102, 0x0E380003, 0x0E340102,
    0x0E330014, 0x001A001F};
const std::vector<uint32_t> kTable6F8 = {  // 0x6F8
    0x67F20003, 0x67F30003, 0x30070040, 0x0E330014};
const std::vector<uint32_t> kRootFai = {  // 0x12F
    0x67F20003, 0x67F30003, 0x0E170003, 0x001A001F, 0x0E070003, 0x3001001F, 0x70030003,
    0x70040102, 0x70050102, 0x7006001F, 0x70070003, 0x6800001F, 0x6803000B, 0x68051003,
    0x682F001F, 0x30080040, 0x7C060003, 0x685D0003};
const std::vector<uint32_t> kIpmSubtreeHierarchy = {  // 0x802D
    0x67F20003, 0x67F30003, 0x3001001F, 0x36020003, 0x36030003, 0x360A000B, 0x0E300102,
    0x0E330014, 0x0E340102, 0x0E380003, 0x3613001F, 0x66350003, 0x66360003, 0x30200102,
    0x66700102, 0x10F4000B, 0x36DA0102, 0x36DE0003, 0x672D0003, 0x68530003, 0x67310003,
    0x67300014, 0x6732001F, 0x6733001F, 0x30210102};
const std::vector<uint32_t> kSearchRootHierarchy = {  // 0x804D
    0x67F20003, 0x67F30003, 0x3001001F, 0x36020003, 0x36030003, 0x360A000B, 0x0E300102,
    0x0E330014, 0x0E340102, 0x0E380003, 0x3613001F, 0x66350003, 0x66360003, 0x30200102,
    0x66700102, 0x36DA0102, 0x30070040, 0x672D0003, 0x68530003, 0x67310003, 0x67300014,
    0x6732001F, 0x6733001F};
const std::vector<uint32_t> kCommonViewsFai = {  // 0x808F
    0x67F20003, 0x67F30003, 0x0E170003, 0x001A001F, 0x0E070003, 0x3001001F, 0x70030003,
    0x70040102, 0x70050102, 0x7006001F, 0x70070003, 0x6800001F, 0x6803000B, 0x68051003,
    0x682F001F, 0x30080040, 0x68340003, 0x683A0003, 0x68410003, 0x68460003, 0x68420102,
    0x68430102, 0x68470003, 0x68480003, 0x68530003};

// Special NIDs ([MS-PST] 2.4.1) and the folders of a new store.
constexpr uint32_t kNidStore = 0x21, kNidNameMap = 0x61, kNidRoot = 0x122;
constexpr uint32_t kNidIpmSubtree = 0x8022, kNidSearchRoot = 0x8042, kNidDeletedItems = 0x8062,
                   kNidCommonViews = 0x8082, kNidSpamSearch = 0x2223;
constexpr uint32_t kFirstUserFolderIndex = 0x405;
constexpr uint32_t kFirstMessageIndex = 0x10000;
constexpr uint32_t kFirstAttachmentIndex = 0x400;
constexpr uint32_t kNidAttachmentTable = 0x671, kNidRecipientTable = 0x692;

constexpr int32_t kMsgFlagRead = 0x1, kMsgFlagHasAttach = 0x10;

// Tags used below.
enum : uint16_t {
  kPidImportance = 0x0017, kPidMessageClass = 0x001A, kPidSensitivity = 0x0036,
  kPidSubject = 0x0037, kPidClientSubmitTime = 0x0039, kPidSentRepSearchKey = 0x003B,
  kPidSubjectPrefix = 0x003D, kPidSentRepEntryId = 0x0041, kPidSentRepName = 0x0042,
  kPidMessageToMe = 0x0057, kPidMessageCcMe = 0x0058, kPidSentRepAddrType = 0x0064,
  kPidSentRepEmail = 0x0065, kPidConversationTopic = 0x0070, kPidTransportHeaders = 0x007D,
  kPidRecipientType = 0x0C15, kPidSenderEntryId = 0x0C19, kPidSenderName = 0x0C1A,
  kPidSenderSearchKey = 0x0C1D, kPidSenderAddrType = 0x0C1E, kPidSenderEmail = 0x0C1F,
  kPidDisplayBcc = 0x0E02, kPidDisplayCc = 0x0E03, kPidDisplayTo = 0x0E04,
  kPidDeliveryTime = 0x0E06, kPidMessageFlags = 0x0E07, kPidMessageSize = 0x0E08,
  kPidResponsibility = 0x0E0F, kPidMessageStatus = 0x0E17, kPidNormalizedSubject = 0x0E1D,
  kPidAttachSize = 0x0E20, kPidRecordKey = 0x0FF9, kPidObjectType = 0x0FFE, kPidEntryId = 0x0FFF,
  kPidBody = 0x1000, kPidHtml = 0x1013, kPidInternetMessageId = 0x1035,
  kPidInternetReferences = 0x1039, kPidInReplyTo = 0x1042, kPidDisplayName = 0x3001,
  kPidAddrType = 0x3002, kPidEmailAddress = 0x3003, kPidComment = 0x3004,
  kPidCreationTime = 0x3007, kPidLastModTime = 0x3008, kPidSearchKey = 0x300B,
  kPidContentCount = 0x3602, kPidContentUnread = 0x3603, kPidSubfolders = 0x360A,
  kPidContainerClass = 0x3613, kPidAttachData = 0x3701, kPidAttachExtension = 0x3703,
  kPidAttachFilename = 0x3704, kPidAttachMethod = 0x3705, kPidAttachLongFilename = 0x3707,
  kPidRenderingPosition = 0x370B, kPidAttachMime = 0x370E, kPidAttachContentId = 0x3712,
  kPidDisplayType = 0x3900, kPidDisplayName7Bit = 0x39FF, kPidSendRichInfo = 0x3A40,
  kPidInternetCodepage = 0x3FDE,
};

std::string Guid(const std::array<uint8_t, 16>& seed, std::string_view salt) {
  std::string in(reinterpret_cast<const char*>(seed.data()), seed.size());
  in.append(salt);
  core::Sha256Digest d = core::Sha256(in);
  return std::string(reinterpret_cast<const char*>(d.data()), 16);
}

std::string EntryId(const std::string& uid, uint32_t nid) {
  std::string e(4, '\0');
  e += uid;
  Append32(e, nid);
  return e;
}

// "SMTP:" + the upper-cased address + NUL, appended to *out.
void AppendSearchKey(const std::string& address, std::string* out) {
  out->append("SMTP:");
  for (char c : address) out->push_back(c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c);
  out->push_back('\0');
}

// [MS-OXCDATA] 2.2.5.1 one-off EntryID, Unicode.
// Appended to *out.
void AppendOneOffEntryId(const std::string& name, const std::string& address, std::string* out) {
  static const unsigned char kOneOffProvider[16] = {0x81, 0x2B, 0x1F, 0xA4, 0xBE, 0xA3, 0x10, 0x19,
                                                    0x9D, 0x6E, 0x00, 0xDD, 0x01, 0x0F, 0x54, 0x02};
  std::string& e = *out;
  e.append(4, '\0');
  e.append(reinterpret_cast<const char*>(kOneOffProvider), 16);
  Append16(e, 0);       // version
  Append16(e, 0x9001);  // Unicode, no rich info
  AppendUtf16(name.empty() ? address : name, &e);
  e.append(2, '\0');
  AppendUtf16("SMTP", &e);
  e.append(2, '\0');
  AppendUtf16(address, &e);
  e.append(2, '\0');
}

// [MS-OXCMSG] 2.2.1.9: a prefix of up to 3 characters ending in ": ".
std::pair<std::string, std::string> SplitSubject(const std::string& subject) {
  size_t colon = subject.find(':');
  if (colon != std::string::npos && colon >= 1 && colon <= 3 && colon + 1 < subject.size() &&
      subject[colon + 1] == ' ') {
    bool ok = true;
    for (size_t i = 0; i < colon; ++i) if (subject[i] == ' ' || (subject[i] >= '0' && subject[i] <= '9')) ok = false;
    if (ok) return {subject.substr(0, colon + 2), subject.substr(colon + 2)};
  }
  return {"", subject};
}

std::string JoinNames(const std::vector<Recipient>& rs, int type) {
  std::string out;
  for (const Recipient& r : rs) {
    if (r.type != type) continue;
    if (!out.empty()) out += "; ";
    out += r.name.empty() ? r.address : r.name;
  }
  return out;
}

std::string Extension(const std::string& filename) {
  size_t dot = filename.rfind('.');
  return dot == std::string::npos ? std::string() : filename.substr(dot);
}

void AddIfNotEmpty(std::vector<Prop>& props, uint16_t id, const std::string& utf8) {
  if (!utf8.empty()) props.push_back(StringProp(id, utf8));
}

}  // namespace

uint64_t EstimateMessageBytes(const Message& m) {
  uint64_t strings = m.subject.size() * 2 + m.body_plain.size() * 2 + m.transport_headers.size() * 2 +
                     m.internet_message_id.size() * 2 + m.in_reply_to.size() * 2 +
                     m.references.size() * 2 + m.sender_name.size() * 4 + m.sender_address.size() * 6 +
                     m.display_to.size() * 2 + m.display_cc.size() * 2 + m.body_html.size();
  uint64_t payload = strings;
  for (const Recipient& r : m.recipients) payload += 160 + (r.name.size() + r.address.size()) * 6;
  for (const Attachment& a : m.attachments) {
    uint64_t n = a.data.size();
    if (n == 0 && !a.path.empty()) {
      n = a.size;
      struct stat st;
      if (n == 0 && ::stat(a.path.c_str(), &st) == 0) n = static_cast<uint64_t>(st.st_size);
    }
    payload += n + 1024 + a.filename.size() * 6 + a.mime_type.size() * 2;
  }
  // Block trailers and 64-byte rounding (< 1%), heap page maps, the PC and
  // tables (~3 KB), and the contents table's shared blocks: a full 8 KB row
  // block or heap block can be flushed during any one Append (amortized they
  // cost ~150 B per message, but the estimate must bound every single call).
  return payload + payload / 64 + 4096 + 2 * (kMaxBlockData + 64);
}

// The table layouts, built once per process and shared by every writer
// (immutable): a sink with thousands of volumes open paid 2 KB per volume
// for private copies.
namespace {
struct Schemas {
  TableSchema hierarchy{kHierarchyTemplate}, contents{kContentsTemplate}, fai{kFaiTemplate},
      search_contents{kSearchContentsTemplate}, receive_folder{kReceiveFolderTable},
      outgoing{kOutgoingQueueTable}, attach{kAttachmentTable}, recip{kRecipientTable},
      t6b6{kTable6B6}, t6d7{kTable6D7}, t6f8{kTable6F8}, root_fai{kRootFai},
      ipm_hierarchy{kIpmSubtreeHierarchy}, search_hierarchy{kSearchRootHierarchy},
      common_views_fai{kCommonViewsFai};
};
const Schemas& SharedSchemas() {
  static const Schemas s;
  return s;
}
}  // namespace

struct Writer::Impl {
  std::unique_ptr<NdbWriter> ndb;
  WriterOptions opt;
  std::string uid;  // 16 bytes
  std::vector<std::string> folder_names;
  std::vector<uint32_t> folder_nids;
  const Schemas& sc = SharedSchemas();
  const TableSchema &hierarchy = sc.hierarchy, &contents = sc.contents, &fai = sc.fai,
                    &search_contents = sc.search_contents, &receive_folder = sc.receive_folder,
                    &outgoing = sc.outgoing, &attach = sc.attach, &recip = sc.recip, &t6b6 = sc.t6b6,
                    &t6d7 = sc.t6d7, &t6f8 = sc.t6f8, &root_fai = sc.root_fai, &ipm_hierarchy = sc.ipm_hierarchy,
                    &search_hierarchy = sc.search_hierarchy, &common_views_fai = sc.common_views_fai;
  std::unique_ptr<TableBuilder> leaf_contents;
  uint32_t next_message_index = kFirstMessageIndex;
  uint64_t unread = 0;
  std::vector<std::pair<const TableSchema*, uint64_t>> empty_tables;  // shared template blocks
  Status error;
  bool closed = false;
  PropList message_props, recipient_props;  // reused from message to message
  std::string message_search_key_base;       // 16 bytes
  std::string scratch_entry_id, scratch_search_key;

  Status AppendMessage(const Message& m, uint32_t nid);
  Result<NodeData> BuildAttachment(const Attachment& a, uint32_t anid, std::vector<Prop>* row_props);
  Status AddEmptyTable(uint32_t nid, const TableSchema& schema);
  Status AddTable(uint32_t nid, const TableSchema& schema,
                  const std::vector<std::pair<uint32_t, std::vector<Prop>>>& rows);
  Status AddPc(uint32_t nid, uint32_t parent, std::vector<Prop> props);
  Status AddHeap(uint32_t nid, uint8_t client_sig, const std::vector<std::string>& allocs, uint32_t root);
  Status WriteScaffolding(uint64_t message_count);
  std::vector<Prop> FolderProps(const std::string& name, uint32_t count, uint32_t unread_count,
                                bool subfolders, bool mail) const;
};

Writer::Writer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Writer::~Writer() = default;

Result<std::unique_ptr<Writer>> Writer::Create(const std::string& path, WriterOptions o) {
  auto impl = std::make_unique<Impl>();
  if (o.display_name.empty()) o.display_name = "WeChat Archive";
  // Folder path: "A/B" -> A, B; empty parts are dropped.
  size_t start = 0;
  while (start <= o.folder.size()) {
    size_t slash = o.folder.find('/', start);
    if (slash == std::string::npos) slash = o.folder.size();
    if (slash > start) impl->folder_names.push_back(o.folder.substr(start, slash - start));
    start = slash + 1;
  }
  if (impl->folder_names.empty()) return Status::InvalidArgument("pst: empty folder name");
  if (impl->folder_names.size() > 64) return Status::InvalidArgument("pst: folder path too deep");
  for (size_t i = 0; i < impl->folder_names.size(); ++i) {
    impl->folder_nids.push_back(MakeNid(kNidTypeNormalFolder, kFirstUserFolderIndex + static_cast<uint32_t>(i)));
  }
  bool zero = std::all_of(o.store_uid.begin(), o.store_uid.end(), [](uint8_t b) { return b == 0; });
  if (zero) {
    core::Sha256Digest d = core::Sha256("wxa-pst-store\n" + o.display_name + "\n" + o.folder);
    std::copy(d.begin(), d.begin() + 16, o.store_uid.begin());
  }
  impl->uid.assign(reinterpret_cast<const char*>(o.store_uid.data()), 16);
  impl->message_search_key_base = Guid(o.store_uid, "message-search-key");
  impl->opt = std::move(o);
  WXA_ASSIGN_OR_RETURN(impl->ndb, NdbWriter::Create(path, impl->opt.write_buffer));
  impl->leaf_contents = std::make_unique<TableBuilder>(impl->ndb.get(), &impl->contents, /*long_lived=*/true);
  WXA_RETURN_IF_ERROR(impl->leaf_contents->Start());
  return std::unique_ptr<Writer>(new Writer(std::move(impl)));
}

uint64_t Writer::bytes_written() const { return impl_->ndb ? impl_->ndb->bytes_written() : 0; }

uint64_t Writer::close_bytes_estimate() const {
  if (!impl_->ndb) return 0;
  // B-tree leaves hold 20 BBT (24-byte) or 15 NBT (32-byte) entries per 512-byte page, index
  // levels under a tenth more; the store's scaffolding (template tables, folders, the contents
  // table's last blocks) stays under 192 KB; a 512-byte allocation-map page per 253,952 bytes.
  // The file then ends where the allocation interval holding its last byte ends.
  const uint64_t pages = (impl_->ndb->blocks() / 20 + impl_->ndb->nodes() / 15 + 2) * 11 / 10 + 4;
  uint64_t bytes = pages * 512 + (192u << 10);
  bytes += bytes / 400 + 4096;
  const uint64_t written = impl_->ndb->bytes_written();
  const uint64_t last = written + bytes - 1;
  const uint64_t interval = last < kFirstAMapOffset ? 0 : (last - kFirstAMapOffset) / kAMapCoverage;
  return IntervalBase(interval) + kAMapCoverage - written;
}

Status Writer::ReleaseBuffer() {
  if (!impl_->error.ok()) return impl_->error;
  if (!impl_->ndb) return Status::Ok();
  // The properties reused from one message to the next hold the largest
  // body and headers seen, in UTF-16: with thousands of volumes open they
  // were 276 MB of a pst: import's 654 MB heap peak (5,311 mailboxes).
  impl_->message_props.Release();
  impl_->recipient_props.Release();
  std::string().swap(impl_->scratch_entry_id);
  std::string().swap(impl_->scratch_search_key);
  Status s = impl_->ndb->ReleaseBuffer();
  if (!s.ok()) impl_->error = s;  // a failed write: the volume is abandoned, as after Append
  return s;
}

size_t Writer::buffer_bytes() const { return impl_->ndb ? impl_->ndb->buffer_bytes() : 0; }

uint64_t Writer::index_memory_bytes() const { return impl_->ndb ? impl_->ndb->IndexMemoryBytes() : 0; }
uint64_t Writer::table_memory_bytes() const { return impl_->leaf_contents ? impl_->leaf_contents->HeldBytes() : 0; }

Status Writer::Append(const Message& m) {
  if (!impl_->error.ok()) return impl_->error;
  if (impl_->closed) return Status::InvalidArgument("pst: writer closed");
  if (impl_->next_message_index >= (1u << 27) - 1) return Status::TooLarge("pst: too many messages");
  uint32_t nid = MakeNid(kNidTypeNormalMessage, impl_->next_message_index);
  Status s = impl_->AppendMessage(m, nid);
  if (!s.ok()) {
    impl_->error = s;
    return s;
  }
  ++impl_->next_message_index;
  ++messages_;
  if (!m.read) ++impl_->unread;
  return Status::Ok();
}

Result<NodeData> Writer::Impl::BuildAttachment(const Attachment& a, uint32_t anid,
                                               std::vector<Prop>* row_props) {
  std::vector<Prop> props;
  SubnodeNids nids;
  Prop data{kPidAttachData, kPtBinary, {}};
  uint64_t first = ndb->blocks();
  uint64_t data_size = a.data.size();
  if (a.data.empty() && !a.path.empty()) {
    int fd = ::open(a.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno("open", a.path, errno);
    core::UniqueFd f(fd);
    DataTreeWriter tree(ndb.get());
    std::string chunk(kMaxBlockData * 16, '\0');
    for (;;) {
      ssize_t n = ::read(f.get(), chunk.data(), chunk.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno("read", a.path, errno);
      }
      if (n == 0) break;
      WXA_RETURN_IF_ERROR(tree.Append(std::string_view(chunk.data(), static_cast<size_t>(n))));
    }
    data_size = tree.size();
    if (a.size != 0 && a.size != data_size) return Status::Corruption("pst: attachment size changed: " + a.path);
    WXA_ASSIGN_OR_RETURN(uint64_t bid, tree.Finish());
    if (bid != 0) {
      data.sub_nid = nids.Next();
      data.sub_bid = bid;
      data.sub_bytes = ndb->DataBytesSince(first);
    }
  } else {
    data.value = a.data;
  }
  if (data_size > 0x7FFFFFFF) return Status::TooLarge("pst: attachment over 2 GiB");
  std::string name = a.filename.empty() ? "attachment" : a.filename;
  props.push_back(Int32Prop(kPidAttachSize, 0));
  props.push_back(StringProp(kPidDisplayName, name));
  props.push_back(std::move(data));
  AddIfNotEmpty(props, kPidAttachExtension, Extension(name));
  props.push_back(StringProp(kPidAttachFilename, name));
  props.push_back(Int32Prop(kPidAttachMethod, 1));  // ATTACH_BY_VALUE
  props.push_back(StringProp(kPidAttachLongFilename, name));
  props.push_back(Int32Prop(kPidRenderingPosition, -1));
  AddIfNotEmpty(props, kPidAttachMime, a.mime_type);
  AddIfNotEmpty(props, kPidAttachContentId, a.content_id);
  for (const Prop& p : props) {
    if (p.id == kPidAttachData) continue;
    row_props->push_back(p);
  }
  WXA_ASSIGN_OR_RETURN(NodeData nd, BuildPropertyContext(ndb.get(), props, &nids, kPidAttachSize));
  for (Prop& p : *row_props) {
    if (p.id == kPidAttachSize) p = Int32Prop(kPidAttachSize, static_cast<int32_t>(std::min<uint64_t>(nd.bytes, 0x7FFFFFFF)));
  }
  (void)anid;
  return nd;
}

Status Writer::Impl::AppendMessage(const Message& m, uint32_t nid) {
  uint64_t first = ndb->blocks();
  std::vector<SlEntry> subnodes;
  SubnodeNids nids;

  // Recipient table (the spec wants one even when empty).
  {
    TableBuilder t(ndb.get(), &recip);
    WXA_RETURN_IF_ERROR(t.Start());
    uint32_t row = 0;
    for (const Recipient& r : m.recipients) {
      PropList& rp = recipient_props;
      rp.Clear();
      const std::string& name = r.name.empty() ? r.address : r.name;
      rp.Bool(kPidResponsibility, true);
      rp.String(kPidAddrType, "SMTP");
      rp.String(kPidEmailAddress, r.address);
      AppendOneOffEntryId(name, r.address, &rp.Add(kPidEntryId, kPtBinary).value);
      rp.String(kPidDisplayName, name);
      rp.Int32(kPidRecipientType, r.type);
      AppendSearchKey(r.address, &rp.Add(kPidSearchKey, kPtBinary).value);
      rp.Int32(kPidObjectType, 6);   // MAPI_MAILUSER
      rp.Int32(kPidDisplayType, 0);  // DT_MAILUSER
      rp.Bool(kPidSendRichInfo, false);
      rp.String(kPidDisplayName7Bit, name);
      WXA_RETURN_IF_ERROR(t.AddRow(row++, 1, rp.props()));
    }
    WXA_ASSIGN_OR_RETURN(NodeData nd, t.Finish());
    WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(nd.subnodes)));
    subnodes.push_back(SlEntry{kNidRecipientTable, nd.bid_data, sub});
  }
  // Attachments: one PC per attachment, and the attachment table.
  if (!m.attachments.empty()) {
    TableBuilder t(ndb.get(), &attach);
    WXA_RETURN_IF_ERROR(t.Start());
    for (size_t i = 0; i < m.attachments.size(); ++i) {
      uint32_t anid = MakeNid(kNidTypeAttachment, kFirstAttachmentIndex + static_cast<uint32_t>(i));
      std::vector<Prop> row;
      WXA_ASSIGN_OR_RETURN(NodeData nd, BuildAttachment(m.attachments[i], anid, &row));
      WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(nd.subnodes)));
      subnodes.push_back(SlEntry{anid, nd.bid_data, sub});
      WXA_RETURN_IF_ERROR(t.AddRow(anid, 1, row));
    }
    WXA_ASSIGN_OR_RETURN(NodeData nd, t.Finish());
    WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(nd.subnodes)));
    subnodes.push_back(SlEntry{kNidAttachmentTable, nd.bid_data, sub});
  }

  // The message PC.
  PropList& p = message_props;
  p.Clear();
  auto [prefix, normalized] = SplitSubject(m.subject);
  p.String(kPidMessageClass, m.message_class.empty() ? std::string_view("IPM.Note") : m.message_class);
  p.String(kPidSubject, m.subject);
  p.String(kPidSubjectPrefix, prefix);
  p.String(kPidNormalizedSubject, normalized);
  p.String(kPidConversationTopic, normalized);
  int64_t delivered = m.received_time_ms != 0 ? m.received_time_ms : m.sent_time_ms;
  if (m.sent_time_ms != 0) p.Time(kPidClientSubmitTime, FileTimeFromUnixMs(m.sent_time_ms));
  if (delivered != 0) {
    p.Time(kPidDeliveryTime, FileTimeFromUnixMs(delivered));
    p.Time(kPidCreationTime, FileTimeFromUnixMs(delivered));
    p.Time(kPidLastModTime, FileTimeFromUnixMs(delivered));
  }
  int32_t flags = (m.read ? kMsgFlagRead : 0) | (m.attachments.empty() ? 0 : kMsgFlagHasAttach);
  p.Int32(kPidMessageFlags, flags);
  p.Int32(kPidMessageSize, 0);  // patched to the node's bytes
  p.Int32(kPidMessageStatus, 0);
  p.Int32(kPidImportance, 1);
  p.Int32(kPidSensitivity, 0);
  p.Bool(kPidMessageToMe, false);
  p.Bool(kPidMessageCcMe, false);
  p.StringIfNotEmpty(kPidBody, m.body_plain);
  if (!m.body_html.empty()) {
    p.Binary(kPidHtml, m.body_html);
    p.Int32(kPidInternetCodepage, 65001);
  }
  p.StringIfNotEmpty(kPidTransportHeaders, m.transport_headers);
  p.StringIfNotEmpty(kPidInternetMessageId, m.internet_message_id);
  p.StringIfNotEmpty(kPidInReplyTo, m.in_reply_to);
  p.StringIfNotEmpty(kPidInternetReferences, m.references);
  if (!m.sender_address.empty() || !m.sender_name.empty()) {
    const std::string& name = m.sender_name.empty() ? m.sender_address : m.sender_name;
    p.String(kPidSenderName, name);
    p.String(kPidSentRepName, name);
    if (!m.sender_address.empty()) {
      std::string& entry_id = scratch_entry_id;
      std::string& search_key = scratch_search_key;
      entry_id.clear();
      search_key.clear();
      AppendOneOffEntryId(name, m.sender_address, &entry_id);
      AppendSearchKey(m.sender_address, &search_key);
      p.String(kPidSenderEmail, m.sender_address);
      p.String(kPidSenderAddrType, "SMTP");
      p.String(kPidSentRepEmail, m.sender_address);
      p.String(kPidSentRepAddrType, "SMTP");
      p.Binary(kPidSenderEntryId, entry_id);
      p.Binary(kPidSentRepEntryId, entry_id);
      p.Binary(kPidSenderSearchKey, search_key);
      p.Binary(kPidSentRepSearchKey, search_key);
    }
  }
  p.String(kPidDisplayTo, m.display_to.empty() ? JoinNames(m.recipients, 1) : m.display_to);
  p.String(kPidDisplayCc, m.display_cc.empty() ? JoinNames(m.recipients, 2) : m.display_cc);
  p.String(kPidDisplayBcc, JoinNames(m.recipients, 3));
  // PidTagSearchKey: unique within the store (the NID folded into a per-store base) and across
  // volumes (the base derives from the store's uid); one SHA-256 per volume, not per message.
  char search_key[16];
  std::memcpy(search_key, message_search_key_base.data(), 16);
  Put32(search_key + 12, Get32(search_key + 12) ^ nid);
  p.Binary(kPidSearchKey, std::string_view(search_key, 16));

  uint64_t extra = ndb->DataBytesSince(first);
  WXA_ASSIGN_OR_RETURN(NodeData pc, BuildPropertyContext(ndb.get(), p.props(), &nids, kPidMessageSize, extra));
  for (SlEntry& e : pc.subnodes) subnodes.push_back(e);
  WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(subnodes)));
  ndb->AddNode(nid, pc.bid_data, sub, folder_nids.back());
  // The contents-table row mirrors the PC's values for the table's columns (AddRow picks them),
  // with the message size now known.
  for (Prop& x : p.props()) {
    if (x.id == kPidMessageSize) {
      x.value.clear();
      Append32(x.value, static_cast<uint32_t>(std::min<uint64_t>(pc.bytes, 0x7FFFFFFF)));
    }
  }
  return leaf_contents->AddRow(nid, 1, p.props());
}


std::vector<Prop> Writer::Impl::FolderProps(const std::string& name, uint32_t count, uint32_t unread_count,
                                            bool subfolders, bool mail) const {
  std::vector<Prop> p;
  p.push_back(StringProp(kPidDisplayName, name));
  p.push_back(Int32Prop(kPidContentCount, static_cast<int32_t>(count)));
  p.push_back(Int32Prop(kPidContentUnread, static_cast<int32_t>(unread_count)));
  p.push_back(BoolProp(kPidSubfolders, subfolders));
  if (mail) p.push_back(StringProp(kPidContainerClass, "IPF.Note"));
  return p;
}

Status Writer::Impl::AddPc(uint32_t nid, uint32_t parent, std::vector<Prop> props) {
  SubnodeNids nids;
  WXA_ASSIGN_OR_RETURN(NodeData nd, BuildPropertyContext(ndb.get(), props, &nids));
  WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(nd.subnodes)));
  ndb->AddNode(nid, nd.bid_data, sub, parent);
  return Status::Ok();
}

Status Writer::Impl::AddEmptyTable(uint32_t nid, const TableSchema& schema) {
  // Outlook shares one block between all empty tables of a schema (cRef).
  for (auto& [s, bid] : empty_tables) {
    if (s == &schema) {
      ndb->AddRef(bid);
      ndb->AddNode(nid, bid, 0, 0);
      return Status::Ok();
    }
  }
  TableBuilder t(ndb.get(), &schema);
  WXA_RETURN_IF_ERROR(t.Start());
  WXA_ASSIGN_OR_RETURN(NodeData nd, t.Finish());
  empty_tables.emplace_back(&schema, nd.bid_data);
  ndb->AddNode(nid, nd.bid_data, 0, 0);
  return Status::Ok();
}

Status Writer::Impl::AddTable(uint32_t nid, const TableSchema& schema,
                              const std::vector<std::pair<uint32_t, std::vector<Prop>>>& rows) {
  if (rows.empty()) return AddEmptyTable(nid, schema);
  auto sorted = rows;
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  TableBuilder t(ndb.get(), &schema);
  WXA_RETURN_IF_ERROR(t.Start());
  for (const auto& [id, props] : sorted) WXA_RETURN_IF_ERROR(t.AddRow(id, 1, props));
  WXA_ASSIGN_OR_RETURN(NodeData nd, t.Finish());
  WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(nd.subnodes)));
  ndb->AddNode(nid, nd.bid_data, sub, 0);
  return Status::Ok();
}

Status Writer::Impl::AddHeap(uint32_t nid, uint8_t client_sig, const std::vector<std::string>& allocs,
                             uint32_t root) {
  HeapBuilder heap(ndb.get(), client_sig);
  for (const std::string& a : allocs) WXA_RETURN_IF_ERROR(heap.Allocate(a).status());
  heap.SetUserRoot(root);
  WXA_ASSIGN_OR_RETURN(uint64_t bid, heap.Finish());
  ndb->AddNode(nid, bid, 0, 0);
  return Status::Ok();
}

namespace {
uint32_t TableNid(uint32_t folder_nid, uint32_t type) { return MakeNid(type, NidIndex(folder_nid)); }
std::string Le32(uint32_t v) {
  std::string s;
  Append32(s, v);
  return s;
}
std::string EmptyBthHeader(uint8_t cb_key, uint8_t cb_ent) {
  std::string h;
  Append8(h, 0xB5);
  Append8(h, cb_key);
  Append8(h, cb_ent);
  Append8(h, 0);
  Append32(h, 0);
  return h;
}
}  // namespace

Status Writer::Impl::WriteScaffolding(uint64_t message_count) {
  const std::string& store_uid = uid;
  // Message store ([MS-PST] 2.4.3) with the properties Outlook writes.
  {
    std::vector<Prop> p;
    std::string repl = Le32(1) + Guid(opt.store_uid, "replica") + Le32(1);
    p.push_back(BinaryProp(0x0E34, repl));
    p.push_back(Int32Prop(0x0E38, 0));
    p.push_back(BinaryProp(kPidRecordKey, store_uid));
    p.push_back(StringProp(kPidDisplayName, opt.display_name));
    p.push_back(Int32Prop(0x35DF, 0xC9));  // PidTagValidFolderMask
    p.push_back(BinaryProp(0x35E0, EntryId(store_uid, kNidIpmSubtree)));
    p.push_back(BinaryProp(0x35E3, EntryId(store_uid, kNidDeletedItems)));
    p.push_back(BinaryProp(0x35E6, EntryId(store_uid, kNidCommonViews)));
    p.push_back(BinaryProp(0x35E7, EntryId(store_uid, kNidSearchRoot)));
    p.push_back(BoolProp(0x6633, true));
    p.push_back(Int32Prop(0x66FA, 0x000E0011));
    p.push_back(Int32Prop(0x66FC, 0x0018B2B3));
    p.push_back(Int32Prop(0x67FF, 0));  // PidTagPstPassword: none
    WXA_RETURN_IF_ERROR(AddPc(kNidStore, 0, std::move(p)));
  }
  // Name-to-id map ([MS-PST] 2.4.7): 251 buckets and the first named
  // properties of Outlook's new store (PSETID_Appointment LIDs); libpff
  // refuses a store whose entry stream is empty.
  {
    static const unsigned char kPsetidAppointment[16] = {0x02, 0x20, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00,
                                                         0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x46};
    static const uint32_t kLids[] = {0x8205, 0x8223, 0x8231, 0x8216, 0x820D, 0x820E, 0x8235, 0x8236, 0x8233};
    constexpr uint32_t kBuckets = 251;
    constexpr uint16_t kGuidField = 3 << 1;  // first GUID of the stream, numeric name
    std::vector<Prop> p;
    p.push_back(Int32Prop(0x0001, kBuckets));
    p.push_back(BinaryProp(0x0002, std::string(reinterpret_cast<const char*>(kPsetidAppointment), 16)));
    std::string entries;
    std::map<uint32_t, std::string> buckets;
    for (uint16_t i = 0; i < sizeof(kLids) / sizeof(kLids[0]); ++i) {
      std::string rec = Le32(kLids[i]);
      Append16(rec, kGuidField);
      Append16(rec, i);  // property id 0x8000 + i
      entries += rec;
      buckets[(kLids[i] ^ kGuidField) % kBuckets] += rec;
    }
    p.push_back(BinaryProp(0x0003, entries));
    p.push_back(BinaryProp(0x0004, {}));
    for (auto& [b, recs] : buckets) p.push_back(BinaryProp(static_cast<uint16_t>(0x1000 + b), recs));
    WXA_RETURN_IF_ERROR(AddPc(kNidNameMap, 0, std::move(p)));
  }
  // Root folder and its tables.
  WXA_RETURN_IF_ERROR(AddPc(kNidRoot, kNidRoot, FolderProps("", 0, 0, true, false)));
  {
    std::vector<std::pair<uint32_t, std::vector<Prop>>> rows;
    rows.emplace_back(kNidIpmSubtree, FolderProps("Top of Outlook data file", 0, 0, true, false));
    rows.emplace_back(kNidSearchRoot, FolderProps("Search Root", 0, 0, false, false));
    rows.emplace_back(kNidSpamSearch, FolderProps("SPAM Search Folder 2", 0, 0, false, false));
    rows.emplace_back(kNidCommonViews, FolderProps("IPM_COMMON_VIEWS", 0, 0, false, false));
    WXA_RETURN_IF_ERROR(AddTable(TableNid(kNidRoot, kNidTypeHierarchyTable), hierarchy, rows));
  }
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidRoot, kNidTypeContentsTable), contents));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidRoot, kNidTypeAssocContentsTable), root_fai));
  // Search internals: empty queue and domain; the activity list names the spam folder.
  ndb->AddNode(0x1E1, 0, 0, 0);
  {
    WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb->WriteBlock(Le32(kNidSpamSearch), false));
    ndb->AddNode(0x201, bid, 0, 0);
  }
  ndb->AddNode(0x261, 0, 0, 0);
  // Template tables ([MS-PST] 2.4.8.x) and the ones Outlook adds.
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x60D, hierarchy));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x60E, contents));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x60F, fai));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x610, search_contents));
  {
    std::vector<Prop> r;
    r.push_back(Int32Prop(0x6605, static_cast<int32_t>(kNidRoot)));
    r.push_back(StringProp(kPidMessageClass, ""));
    WXA_RETURN_IF_ERROR(AddTable(0x62B, receive_folder, {{1, r}}));
  }
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x64C, outgoing));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x671, attach));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x692, recip));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x6B6, t6b6));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x6D7, t6d7));
  WXA_RETURN_IF_ERROR(AddEmptyTable(0x6F8, t6f8));
  // Undocumented internal nodes, shaped as in Outlook's empty store: 0xC01 is
  // a 0x9C heap whose root points at an empty BTH with 16-byte keys; 0xE01 a
  // 0xCC heap with a 56-byte header and an empty BTH.
  WXA_RETURN_IF_ERROR(AddHeap(0xC01, 0x9C, {Le32(0x40), EmptyBthHeader(16, 4)}, 0x20));
  {
    std::string h = Le32(0x40) + Le32(1) + Le32(MakeNid(kNidTypeNormalMessage, kFirstMessageIndex)) + Le32(0) +
                    Le32(3) + Le32(0) + Le32(0x10) + Le32(0) + Le32(0x48B3) + Le32(0) + Le32(0) + Le32(0) +
                    Le32(0) + Le32(0x1E2);
    WXA_RETURN_IF_ERROR(AddHeap(0xE01, 0xCC, {h, EmptyBthHeader(4, 4)}, 0x20));
  }
  ndb->AddNode(0xE41, 0, 0, 0);
  ndb->AddNode(0xEC1, 0, 0, 0);
  {
    std::string d;
    const uint32_t nids[] = {kNidStore, kNidIpmSubtree, kNidSearchRoot, kNidDeletedItems, kNidCommonViews};
    for (uint32_t n : nids) {
      d += Le32(n) + std::string(16, '\0');
      Append16(d, 0);
      Append16(d, 4);
      Append16(d, n == kNidCommonViews ? 2 : 1);
      Append16(d, 0);
      Append32(d, 0);
    }
    WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb->WriteBlock(d, false));
    ndb->AddNode(0xEE1, bid, 0, 0);
  }
  {
    std::string d = Le32(8) + std::string(24, '\0') + Le32(0x00010100) + std::string(8, '\0') +
                    Guid(opt.store_uid, "f01-a") + Guid(opt.store_uid, "f01-b") + Le32(0x6A) + Le32(2);
    Append64(d, FileTimeFromUnixMs(0));
    d += Le32(0) + Le32(5) + Le32(5) + Le32(0);
    WXA_ASSIGN_OR_RETURN(uint64_t bid, ndb->WriteBlock(d, false));
    ndb->AddNode(0xF01, bid, 0, 0);
  }
  ndb->AddNode(0xF21, 0, 0, 0);
  // SPAM search folder and its search objects.
  WXA_RETURN_IF_ERROR(AddPc(kNidSpamSearch, kNidRoot, FolderProps("SPAM Search Folder 2", 0, 0, false, false)));
  ndb->AddNode(MakeNid(kNidTypeSearchUpdateQueue, NidIndex(kNidSpamSearch)), 0, 0, 0);
  WXA_RETURN_IF_ERROR(AddPc(MakeNid(kNidTypeSearchCriteria, NidIndex(kNidSpamSearch)), 0, {Int32Prop(0x660B, 0)}));
  WXA_RETURN_IF_ERROR(AddEmptyTable(MakeNid(kNidTypeSearchContentsTable, NidIndex(kNidSpamSearch)), search_contents));

  // The mail folder chain, innermost first, so each parent's hierarchy row
  // can mirror its child.
  std::vector<Prop> child_props;
  uint32_t child_nid = 0;
  for (size_t k = folder_nids.size(); k-- > 0;) {
    bool leaf = k + 1 == folder_nids.size();
    uint32_t nid = folder_nids[k];
    uint32_t parent = k == 0 ? kNidIpmSubtree : folder_nids[k - 1];
    std::vector<Prop> props = FolderProps(folder_names[k], leaf ? static_cast<uint32_t>(message_count) : 0,
                                          leaf ? static_cast<uint32_t>(unread) : 0, !leaf, true);
    WXA_RETURN_IF_ERROR(AddPc(nid, parent, props));
    if (leaf) {
      WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(nid, kNidTypeHierarchyTable), hierarchy));
      WXA_ASSIGN_OR_RETURN(NodeData nd, leaf_contents->Finish());
      WXA_ASSIGN_OR_RETURN(uint64_t sub, ndb->WriteSubnodeTree(std::move(nd.subnodes)));
      ndb->AddNode(TableNid(nid, kNidTypeContentsTable), nd.bid_data, sub, 0);
    } else {
      WXA_RETURN_IF_ERROR(AddTable(TableNid(nid, kNidTypeHierarchyTable), hierarchy, {{child_nid, child_props}}));
      WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(nid, kNidTypeContentsTable), contents));
    }
    WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(nid, kNidTypeAssocContentsTable), fai));
    child_props = std::move(props);
    child_nid = nid;
  }
  // Top of Outlook data file (IPM subtree) with Deleted Items and our folder.
  WXA_RETURN_IF_ERROR(AddPc(kNidIpmSubtree, kNidRoot, FolderProps("Top of Outlook data file", 0, 0, true, false)));
  {
    std::vector<Prop> deleted = FolderProps("Deleted Items", 0, 0, false, false);
    std::vector<std::pair<uint32_t, std::vector<Prop>>> rows = {{kNidDeletedItems, deleted}, {child_nid, child_props}};
    WXA_RETURN_IF_ERROR(AddTable(TableNid(kNidIpmSubtree, kNidTypeHierarchyTable), ipm_hierarchy, rows));
    deleted.push_back(StringProp(kPidComment, "Deleted Items folder"));
    WXA_RETURN_IF_ERROR(AddPc(kNidDeletedItems, kNidIpmSubtree, deleted));
  }
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidIpmSubtree, kNidTypeContentsTable), contents));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidIpmSubtree, kNidTypeAssocContentsTable), fai));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidDeletedItems, kNidTypeHierarchyTable), hierarchy));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidDeletedItems, kNidTypeContentsTable), contents));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidDeletedItems, kNidTypeAssocContentsTable), fai));
  // Search Root (finder) and IPM_COMMON_VIEWS.
  WXA_RETURN_IF_ERROR(AddPc(kNidSearchRoot, kNidRoot, FolderProps("Search Root", 0, 0, false, false)));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidSearchRoot, kNidTypeHierarchyTable), search_hierarchy));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidSearchRoot, kNidTypeContentsTable), contents));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidSearchRoot, kNidTypeAssocContentsTable), fai));
  {
    std::vector<Prop> p = FolderProps("IPM_COMMON_VIEWS", 0, 0, false, false);
    p.push_back(StringProp(kPidComment, ""));
    WXA_RETURN_IF_ERROR(AddPc(kNidCommonViews, kNidRoot, p));
  }
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidCommonViews, kNidTypeHierarchyTable), hierarchy));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidCommonViews, kNidTypeContentsTable), contents));
  WXA_RETURN_IF_ERROR(AddEmptyTable(TableNid(kNidCommonViews, kNidTypeAssocContentsTable), common_views_fai));
  return Status::Ok();
}

Status Writer::Close() { return Close(impl_->opt.sync_on_close); }

Status Writer::Close(bool sync) {
  if (!impl_->error.ok()) return impl_->error;
  if (impl_->closed) return Status::InvalidArgument("pst: writer closed");
  impl_->closed = true;
  Status s = impl_->WriteScaffolding(messages_);
  if (s.ok()) {
    NdbHeaderInfo info;
    for (uint32_t& n : info.rgnid) n = 0x400;
    uint32_t folders = NidIndex(impl_->folder_nids.back()) + 1;
    info.rgnid[kNidTypeNormalFolder] = folders;
    info.rgnid[kNidTypeHierarchyTable] = folders;
    info.rgnid[kNidTypeContentsTable] = folders;
    info.rgnid[kNidTypeAssocContentsTable] = folders;
    info.rgnid[kNidTypeSearchFolder] = 0x4000;
    info.rgnid[kNidTypeNormalMessage] = impl_->next_message_index;
    info.rgnid[kNidTypeAssocMessage] = 0x8000;
    info.unique = 1;
    s = impl_->ndb->Finish(info, sync);
  }
  if (!s.ok()) impl_->error = s;
  return s;
}

}  // namespace wxa::pst
