// wxa_multiappend_replay: the practical ceiling for uploading a Maildir tree
// written by the engine (ROOT/<mailbox>/.WeChat Archiver/{cur,new}/*) into
// an IMAP server, with nothing but raw MULTIAPPEND. Our IMAP client is
// measured against it in the same run.
//
// Honest by construction: it does only what our client can do too. Every
// message is read into memory first (not timed); the timed part is connect,
// log in (SASL PLAIN, the master user authorized as the mailbox, or the
// mailbox's own password), CREATE and SELECT the folder, and APPEND every
// message with its flags (from the file name) and INTERNALDATE (the file's
// mtime), in MULTIAPPEND batches of --batch messages / --batch-bytes with
// LITERAL+ (synchronizing literals, one message per command, when the
// server offers no LITERAL+ / no MULTIAPPEND), --inflight commands
// pipelined, over --connections connections working on different mailboxes
// in parallel (one connection per mailbox at a time). Every tagged reply is
// checked; --verify compares the folder's message count afterwards.
//
//   wxa_multiappend_replay --root DIR --port PORT
//       [--host 127.0.0.1] [--master USER:PASS | --password PASS]
//       [--folder "WeChat Archiver"] [--folder-dir ".WeChat Archiver"]
//       [--connections 8] [--batch 100] [--batch-bytes 8388608] [--inflight 1]
//       [--no-select] [--verify] [--json FILE]
//
// Prints a summary on stderr and one JSON object on stdout.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace fs = std::filesystem;

struct Message {
  std::string bytes;
  std::string flags;  // "\\Seen \\Flagged" from the Maildir info ":2,FS"
  std::string date;   // INTERNALDATE, "05-Mar-2024 08:00:00 +0000"
};

struct Mailbox {
  std::string name;  // the directory name = the login / authzid
  std::vector<Message> messages;
  uint64_t bytes = 0;
};

struct Options {
  std::string root;
  std::string host = "127.0.0.1";
  int port = 0;
  std::string master_user, master_password;
  std::string password;
  std::string folder = "WeChat Archiver";
  std::string folder_dir;  // default: "." + folder with '/' -> '.'
  int connections = 8;
  size_t batch = 100;
  uint64_t batch_bytes = 8ull << 20;
  int inflight = 1;
  bool select = true;
  bool verify = false;
  std::string json_path;
};

std::string ImapDate(time_t t) {
  static const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%02d-%s-%04d %02d:%02d:%02d +0000", tm.tm_mday, kMonths[tm.tm_mon],
                tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
  return buf;
}

// Maildir info ":2,<letters>" -> IMAP system flags.
std::string FlagsFromName(const std::string& name) {
  size_t p = name.rfind(":2,");
  if (p == std::string::npos) return "";
  std::string out;
  for (char c : name.substr(p + 3)) {
    const char* f = c == 'S' ? "\\Seen" : c == 'F' ? "\\Flagged" : c == 'R' ? "\\Answered"
                  : c == 'D' ? "\\Draft" : c == 'T' ? "\\Deleted" : nullptr;
    if (f != nullptr) out += (out.empty() ? "" : " ") + std::string(f);
  }
  return out;
}

std::string Quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

std::string Base64(const std::string& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], k[v & 63]};
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {k[v >> 18], k[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {k[v >> 18], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

// ---- loading (not timed) ----
bool LoadTree(const Options& o, std::vector<Mailbox>* out, std::string* err) {
  std::string folder_dir = o.folder_dir;
  if (folder_dir.empty()) {
    folder_dir = "." + o.folder;
    std::replace(folder_dir.begin(), folder_dir.end(), '/', '.');
  }
  std::error_code ec;
  std::vector<fs::path> boxes;
  for (const auto& e : fs::directory_iterator(o.root, ec)) {
    std::error_code ec2;
    if (e.is_directory(ec2) && fs::is_directory(e.path() / folder_dir, ec2)) boxes.push_back(e.path());
  }
  if (ec) {
    *err = "cannot list " + o.root + ": " + ec.message();
    return false;
  }
  std::sort(boxes.begin(), boxes.end());
  for (const auto& b : boxes) {
    Mailbox mb;
    mb.name = b.filename().string();
    std::vector<fs::path> files;
    for (const char* sub : {"cur", "new"}) {
      for (const auto& e : fs::directory_iterator(b / folder_dir / sub, ec)) {
        std::error_code ec2;
        if (e.is_regular_file(ec2)) files.push_back(e.path());
      }
      ec.clear();
    }
    std::sort(files.begin(), files.end());  // names start with the date
    for (const auto& f : files) {
      Message m;
      std::ifstream in(f, std::ios::binary);
      m.bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      struct stat st;
      if (!in.good() && !in.eof()) {
        *err = "cannot read " + f.string();
        return false;
      }
      if (::stat(f.c_str(), &st) != 0) {
        *err = "cannot stat " + f.string() + ": " + std::strerror(errno);
        return false;
      }
      m.date = ImapDate(st.st_mtime);
      m.flags = FlagsFromName(f.filename().string());
      mb.bytes += m.bytes.size();
      mb.messages.push_back(std::move(m));
    }
    if (!mb.messages.empty()) out->push_back(std::move(mb));
  }
  if (out->empty()) {
    *err = "no messages under " + o.root + "/*/" + folder_dir + "/{cur,new}";
    return false;
  }
  return true;
}

// ---- one blocking IMAP connection ----
class Conn {
 public:
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool Open(const Options& o, std::string* err) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(o.host.c_str(), std::to_string(o.port).c_str(), &hints, &res) != 0 || !res) {
      *err = "cannot resolve " + o.host;
      return false;
    }
    fd_ = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = fd_ < 0 ? -1 : ::connect(fd_, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc != 0) {
      *err = std::string("connect: ") + std::strerror(errno);
      return false;
    }
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::string greeting;
    if (!ReadLine(&greeting, err)) return false;
    while (greeting.find("Waiting for authentication") != std::string::npos) {
      if (!ReadLine(&greeting, err)) return false;
    }
    NoteCaps(greeting);
    return true;
  }
  bool WriteAll(const std::string& s, std::string* err) {
    iovec v{const_cast<char*>(s.data()), s.size()};
    return WriteV(&v, 1, err);
  }
  // writev of everything, resuming after short writes.
  bool WriteV(iovec* v, size_t n, std::string* err) {
    while (n > 0) {
      ssize_t w = ::writev(fd_, v, static_cast<int>(std::min<size_t>(n, IOV_MAX)));
      if (w < 0) {
        if (errno == EINTR) continue;
        *err = std::string("write: ") + std::strerror(errno);
        return false;
      }
      size_t left = static_cast<size_t>(w);
      while (n > 0 && left >= v->iov_len) {
        left -= v->iov_len;
        ++v;
        --n;
      }
      if (n > 0) {
        v->iov_base = static_cast<char*>(v->iov_base) + left;
        v->iov_len -= left;
      }
    }
    return true;
  }
  bool ReadLine(std::string* line, std::string* err) {
    for (;;) {
      size_t nl = buf_.find('\n', pos_);
      if (nl != std::string::npos) {
        *line = buf_.substr(pos_, nl + 1 - pos_);
        pos_ = nl + 1;
        if (pos_ == buf_.size()) {
          buf_.clear();
          pos_ = 0;
        }
        return true;
      }
      char tmp[16384];
      ssize_t r = ::read(fd_, tmp, sizeof tmp);
      if (r <= 0) {
        *err = r == 0 ? "server closed the connection" : std::string("read: ") + std::strerror(errno);
        return false;
      }
      buf_.append(tmp, static_cast<size_t>(r));
    }
  }
  // Reads up to the tagged line for `tag` (server literals are not expected
  // in replies to the commands used here).
  bool Reply(const std::string& tag, std::string* status, std::string* err) {
    std::string line;
    for (;;) {
      if (!ReadLine(&line, err)) return false;
      NoteCaps(line);
      if (line.compare(0, tag.size() + 1, tag + " ") == 0) {
        *status = line.substr(tag.size() + 1);
        while (!status->empty() && (status->back() == '\n' || status->back() == '\r')) status->pop_back();
        return true;
      }
    }
  }
  bool Command(const std::string& tag, const std::string& cmd, std::string* status, std::string* err) {
    return WriteAll(tag + " " + cmd + "\r\n", err) && Reply(tag, status, err);
  }
  bool WaitContinuation(std::string* err) {
    std::string line;
    for (;;) {
      if (!ReadLine(&line, err)) return false;
      if (line[0] == '+') return true;
      if (line[0] != '*') {
        *err = "refused before the literal: " + line;
        return false;
      }
    }
  }
  bool Has(const char* cap) const { return (" " + caps_ + " ").find(std::string(" ") + cap + " ") != std::string::npos; }

 private:
  void NoteCaps(const std::string& line) {
    size_t p = line.find("[CAPABILITY ");
    if (p != std::string::npos) {
      caps_ = line.substr(p + 12, line.find(']', p) - p - 12);
    } else if (line.rfind("* CAPABILITY ", 0) == 0) {
      caps_ = line.substr(13);
      while (!caps_.empty() && (caps_.back() == '\n' || caps_.back() == '\r')) caps_.pop_back();
    }
  }
  int fd_ = -1;
  std::string buf_;
  size_t pos_ = 0;
  std::string caps_;
};

struct Totals {
  std::atomic<uint64_t> messages{0}, bytes{0}, commands{0}, errors{0};
  std::mutex mu;
  std::vector<std::string> error_texts;  // guarded by mu
  void Error(const std::string& s) {
    ++errors;
    std::lock_guard<std::mutex> l(mu);
    if (error_texts.size() < 20) error_texts.push_back(s);
  }
};

// Uploads one mailbox over one connection. Returns false on a fatal error.
bool UploadMailbox(const Options& o, const Mailbox& mb, Totals* t) {
  Conn c;
  std::string err, st;
  auto fail = [&](const std::string& what) {
    t->Error(mb.name + ": " + what);
    return false;
  };
  if (!c.Open(o, &err)) return fail(err);
  bool ok = !o.master_user.empty()
                ? c.Command("a", "AUTHENTICATE PLAIN " +
                                     Base64(mb.name + std::string(1, '\0') + o.master_user +
                                            std::string(1, '\0') + o.master_password),
                            &st, &err)
                : c.Command("a", "LOGIN " + Quote(mb.name) + " " + Quote(o.password), &st, &err);
  if (!ok) return fail(err);
  if (st.rfind("OK", 0) != 0) return fail("login: " + st);
  if (!c.Has("LITERAL+") || !c.Has("MULTIAPPEND")) {
    // The capability list after login may come untagged only on request.
    if (!c.Command("b", "CAPABILITY", &st, &err)) return fail(err);
  }
  const bool literal_plus = c.Has("LITERAL+");
  const bool multi = c.Has("MULTIAPPEND") && literal_plus;
  const std::string box = Quote(o.folder);
  if (!c.Command("c", "CREATE " + box, &st, &err)) return fail(err);
  if (st.rfind("OK", 0) != 0 && st.find("ALREADYEXISTS") == std::string::npos) {
    return fail("CREATE: " + st);
  }
  if (o.select) {
    if (!c.Command("d", "SELECT " + box, &st, &err)) return fail(err);
    if (st.rfind("OK", 0) != 0) return fail("SELECT: " + st);
  }

  struct Sent {
    std::string tag;
    uint64_t messages, bytes;
  };
  std::vector<Sent> outstanding;  // in order; a message counts once its OK is in
  uint64_t seq = 0;
  auto collect_one = [&]() {
    std::string status;
    const Sent& s = outstanding.front();
    if (!c.Reply(s.tag, &status, &err)) return false;
    if (status.rfind("OK", 0) == 0) {
      t->messages += s.messages;
      t->bytes += s.bytes;
    } else {
      t->Error(mb.name + ": APPEND " + s.tag + ": " + status);
    }
    outstanding.erase(outstanding.begin());
    return true;
  };
  size_t i = 0;
  std::vector<std::string> heads;
  std::vector<iovec> iov;
  while (i < mb.messages.size()) {
    size_t end = i;
    uint64_t batch_bytes = 0;
    size_t max_n = multi ? o.batch : 1;
    while (end < mb.messages.size() && end - i < max_n &&
           (end == i || batch_bytes + mb.messages[end].bytes.size() <= o.batch_bytes)) {
      batch_bytes += mb.messages[end].bytes.size();
      ++end;
    }
    std::string tag = "A" + std::to_string(++seq);
    heads.clear();
    iov.clear();
    heads.reserve(end - i + 1);
    for (size_t k = i; k < end; ++k) {
      const Message& m = mb.messages[k];
      std::string h = k == i ? tag + " APPEND " + box + " " : " ";
      if (!m.flags.empty()) h += "(" + m.flags + ") ";
      h += "\"" + m.date + "\" {" + std::to_string(m.bytes.size()) + (literal_plus ? "+" : "") + "}\r\n";
      heads.push_back(std::move(h));
    }
    heads.push_back("\r\n");
    if (literal_plus) {
      for (size_t k = i; k < end; ++k) {
        iov.push_back({heads[k - i].data(), heads[k - i].size()});
        iov.push_back({const_cast<char*>(mb.messages[k].bytes.data()), mb.messages[k].bytes.size()});
      }
      iov.push_back({heads.back().data(), heads.back().size()});
      if (!c.WriteV(iov.data(), iov.size(), &err)) return fail(err);
    } else {
      // Synchronizing literal: one round trip before the bytes.
      if (!c.WriteAll(heads[0], &err) || !c.WaitContinuation(&err)) return fail(err);
      iovec v[2] = {{const_cast<char*>(mb.messages[i].bytes.data()), mb.messages[i].bytes.size()},
                    {heads.back().data(), heads.back().size()}};
      if (!c.WriteV(v, 2, &err)) return fail(err);
    }
    outstanding.push_back({tag, end - i, batch_bytes});
    ++t->commands;
    i = end;
    int window = literal_plus ? std::max(1, o.inflight) : 1;
    while (static_cast<int>(outstanding.size()) >= window) {
      if (!collect_one()) return fail(err);
    }
  }
  while (!outstanding.empty()) {
    if (!collect_one()) return fail(err);
  }
  (void)c.Command("z", "LOGOUT", &st, &err);
  return true;
}

bool VerifyMailbox(const Options& o, const Mailbox& mb, std::string* why) {
  Conn c;
  std::string err, st;
  if (!c.Open(o, &err)) {
    *why = err;
    return false;
  }
  bool ok = !o.master_user.empty()
                ? c.Command("a", "AUTHENTICATE PLAIN " +
                                     Base64(mb.name + std::string(1, '\0') + o.master_user +
                                            std::string(1, '\0') + o.master_password),
                            &st, &err)
                : c.Command("a", "LOGIN " + Quote(mb.name) + " " + Quote(o.password), &st, &err);
  if (!ok || st.rfind("OK", 0) != 0) {
    *why = "login: " + st + err;
    return false;
  }
  if (!c.WriteAll("b STATUS " + Quote(o.folder) + " (MESSAGES)\r\n", &err)) {
    *why = err;
    return false;
  }
  std::string line;
  uint64_t count = 0;
  for (;;) {
    if (!c.ReadLine(&line, &err)) {
      *why = err;
      return false;
    }
    size_t p = line.find("(MESSAGES ");
    if (line.rfind("* STATUS", 0) == 0 && p != std::string::npos) count = std::strtoull(line.c_str() + p + 10, nullptr, 10);
    if (line.rfind("b ", 0) == 0) break;
  }
  if (count != mb.messages.size()) {
    *why = mb.name + ": " + std::to_string(count) + " messages in the folder, " +
           std::to_string(mb.messages.size()) + " uploaded (was it empty before?)";
    return false;
  }
  return true;
}

int Usage(const std::string& why) {
  std::cerr << "wxa_multiappend_replay: " << why
            << "\nusage: wxa_multiappend_replay --root DIR --port PORT [--host H] "
               "[--master USER:PASS | --password PASS] [--folder NAME] [--folder-dir DIR] "
               "[--connections N] [--batch N] [--batch-bytes N] [--inflight N] [--no-select] "
               "[--verify] [--json FILE]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) std::exit(Usage(a + " needs a value"));
      return argv[++i];
    };
    if (a == "--root") {
      o.root = next();
    } else if (a == "--host") {
      o.host = next();
    } else if (a == "--port") {
      o.port = std::atoi(next().c_str());
    } else if (a == "--master") {
      std::string v = next();
      size_t c = v.find(':');
      if (c == std::string::npos) return Usage("--master wants USER:PASS");
      o.master_user = v.substr(0, c);
      o.master_password = v.substr(c + 1);
    } else if (a == "--password") {
      o.password = next();
    } else if (a == "--folder") {
      o.folder = next();
    } else if (a == "--folder-dir") {
      o.folder_dir = next();
    } else if (a == "--connections") {
      o.connections = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--batch") {
      o.batch = std::max<size_t>(1, std::strtoull(next().c_str(), nullptr, 10));
    } else if (a == "--batch-bytes") {
      o.batch_bytes = std::max<uint64_t>(1, std::strtoull(next().c_str(), nullptr, 10));
    } else if (a == "--inflight") {
      o.inflight = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--no-select") {
      o.select = false;
    } else if (a == "--verify") {
      o.verify = true;
    } else if (a == "--json") {
      o.json_path = next();
    } else {
      return Usage("unknown argument " + a);
    }
  }
  if (o.root.empty() || o.port <= 0) return Usage("--root and --port are required");
  if (o.master_user.empty() && o.password.empty()) return Usage("--master or --password is required");

  std::vector<Mailbox> boxes;
  std::string err;
  auto l0 = std::chrono::steady_clock::now();
  if (!LoadTree(o, &boxes, &err)) {
    std::cerr << "wxa_multiappend_replay: " << err << "\n";
    return 1;
  }
  double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - l0).count();
  uint64_t total_msgs = 0, total_bytes = 0;
  for (const auto& b : boxes) {
    total_msgs += b.messages.size();
    total_bytes += b.bytes;
  }

  Totals t;
  std::atomic<size_t> next_box{0};
  int workers = std::min<int>(o.connections, static_cast<int>(boxes.size()));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < workers; ++w) {
    threads.emplace_back([&] {
      for (size_t k; (k = next_box.fetch_add(1)) < boxes.size();) (void)UploadMailbox(o, boxes[k], &t);
    });
  }
  for (auto& th : threads) th.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  uint64_t verify_failures = 0;
  if (o.verify) {
    for (const auto& b : boxes) {
      std::string why;
      if (!VerifyMailbox(o, b, &why)) {
        ++verify_failures;
        t.Error("verify: " + why);
      }
    }
  }
  double mps = static_cast<double>(t.messages.load()) / secs;
  double mbps = static_cast<double>(t.bytes.load()) / secs / 1e6;
  std::fprintf(stderr,
               "loaded %llu messages (%.1f MB) from %zu mailboxes in %.2f s\n"
               "uploaded %llu messages in %llu commands over %d connections in %.3f s: "
               "%.0f msgs/s, %.1f MB/s, %llu errors%s\n",
               static_cast<unsigned long long>(total_msgs), total_bytes / 1e6, boxes.size(), load_s,
               static_cast<unsigned long long>(t.messages.load()),
               static_cast<unsigned long long>(t.commands.load()), workers, secs, mps, mbps,
               static_cast<unsigned long long>(t.errors.load()),
               o.verify ? (verify_failures == 0 ? ", verified" : ", VERIFY FAILED") : "");
  for (const auto& e : t.error_texts) std::fprintf(stderr, "  error: %s\n", e.c_str());
  char json[1024];
  std::snprintf(json, sizeof json,
                "{\"tool\":\"wxa_multiappend_replay\",\"mailboxes\":%zu,\"messages\":%llu,"
                "\"bytes\":%llu,\"seconds\":%.4f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.2f,"
                "\"connections\":%d,\"batch\":%zu,\"batch_bytes\":%llu,\"inflight\":%d,"
                "\"select\":%s,\"errors\":%llu,\"verified\":%s}",
                boxes.size(), static_cast<unsigned long long>(t.messages.load()),
                static_cast<unsigned long long>(t.bytes.load()), secs, mps, mbps, workers, o.batch,
                static_cast<unsigned long long>(o.batch_bytes), o.inflight, o.select ? "true" : "false",
                static_cast<unsigned long long>(t.errors.load()),
                o.verify ? (verify_failures == 0 ? "true" : "false") : "null");
  std::cout << json << std::endl;
  if (!o.json_path.empty()) std::ofstream(o.json_path) << json << "\n";
  return t.errors.load() == 0 ? 0 : 1;
}
