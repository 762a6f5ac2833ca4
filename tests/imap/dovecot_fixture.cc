#include "tests/imap/dovecot_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "formats/core/file.h"
#include "tests/imap/imap_test_client.h"
#include "tests/imap/test_tls.h"

namespace wxa::test {

namespace fs = std::filesystem;

const char* const kDovecot23Capabilities =
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE";

namespace {

constexpr const char* kDirPrefix = "wxa-dovecot-";
// Unix socket paths (base_dir/login/...) must stay under 108 bytes.
constexpr size_t kMaxBaseLength = 60;

std::string FindBinary(const std::string& name) {
  for (const char* dir : {"/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin"}) {
    std::string p = std::string(dir) + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return "";
}

Status WriteFileMode(const std::string& path, std::string_view data, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return Status::FromErrno("open", path, errno);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return Status::FromErrno("write", path, e);
    }
    off += static_cast<size_t>(n);
  }
  ::fchmod(fd, mode);
  ::close(fd);
  return Status::Ok();
}

// The file's bytes, "" when it cannot be read. Never throws: /proc/PID
// files of a process that exits while read fail with ESRCH, which
// std::istreambuf_iterator turns into an exception (seen in CI).
std::string ReadSmallFile(const std::string& path) {
  auto r = core::ReadWholeFile(path);
  return r.ok() ? std::move(*r) : std::string();
}

Result<uint16_t> FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno("socket", "", errno);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    int e = errno;
    ::close(fd);
    return Status::FromErrno("bind", "127.0.0.1:0", e);
  }
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);
  return static_cast<uint16_t>(ntohs(sa.sin_port));
}

bool ProcessAlive(int pid) { return pid > 0 && (::kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace

std::string ProcCmdline(int pid) {
  std::string s = ReadSmallFile("/proc/" + std::to_string(pid) + "/cmdline");
  std::replace(s.begin(), s.end(), '\0', ' ');
  return s;
}

namespace {

int ReadPid(const std::string& path) {
  std::string s = ReadSmallFile(path);
  return std::atoi(s.c_str());
}

// Whether every directory above `path` lets "others" traverse it (when
// Dovecot runs as another user than the test).
bool TraversableByOthers(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::absolute(path, ec);
  if (ec) return false;
  for (fs::path cur = p; !cur.empty(); cur = cur.parent_path()) {
    struct stat st;
    if (::stat(cur.c_str(), &st) != 0) return false;
    if ((st.st_mode & S_IXOTH) == 0) return false;
    if (cur == cur.root_path()) break;
  }
  return true;
}

std::vector<std::string> TempBases() {
  std::vector<std::string> bases;
  const char* t = std::getenv("TMPDIR");
  if (t != nullptr && *t != '\0') bases.emplace_back(t);
  bases.emplace_back("/tmp");
  return bases;
}

// Runs argv with pipes for stdout and stderr; *rc = exit status (128+signal).
Status RunCapture(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                  std::chrono::milliseconds timeout, std::string* out, std::string* err, int* rc) {
  int po[2], pe[2];
  if (::pipe2(po, O_CLOEXEC) != 0) return Status::FromErrno("pipe2", "", errno);
  if (::pipe2(pe, O_CLOEXEC) != 0) {
    ::close(po[0]);
    ::close(po[1]);
    return Status::FromErrno("pipe2", "", errno);
  }
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : env) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Status::FromErrno("fork", argv[0], errno);
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::dup2(po[1], 1);
    ::dup2(pe[1], 2);
    ::execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  ::close(po[1]);
  ::close(pe[1]);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  pollfd fds[2] = {{po[0], POLLIN, 0}, {pe[0], POLLIN, 0}};
  int open_fds = 2;
  bool timed_out = false;
  char buf[65536];
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    int pr = ::poll(fds, 2, static_cast<int>(left.count()));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) {
        (i == 0 ? out : err)->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) ::close(f.fd);
  }
  if (timed_out) ::kill(pid, SIGKILL);
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  *rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  if (timed_out) return Status::IOError(argv[0] + " timed out");
  return Status::Ok();
}

std::string Tail(const std::string& text, size_t lines) {
  if (text.empty() || lines == 0) return "";
  size_t pos = text.back() == '\n' ? text.size() - 1 : text.size();
  size_t count = 0;
  while (pos > 0) {
    size_t nl = text.rfind('\n', pos - 1);
    if (nl == std::string::npos) return text;
    if (++count == lines) return text.substr(nl + 1);
    pos = nl;
  }
  return text;
}

// Parses the attribute list of "* n FETCH (...)".
Status ParseFetch(std::string_view r, StoredMessage* m) {
  size_t open = r.find("FETCH (");
  if (open == std::string_view::npos) return Status::Corruption("not a FETCH response");
  size_t i = open + 7;
  auto skip_spaces = [&] {
    while (i < r.size() && r[i] == ' ') ++i;
  };
  while (true) {
    skip_spaces();
    if (i >= r.size()) return Status::Corruption("truncated FETCH response");
    if (r[i] == ')') break;
    size_t name_end = r.find(' ', i);
    if (name_end == std::string_view::npos) return Status::Corruption("FETCH item without value");
    std::string name(r.substr(i, name_end - i));
    i = name_end + 1;
    std::string value;
    if (r[i] == '(') {
      int depth = 0;
      size_t start = i;
      for (; i < r.size(); ++i) {
        if (r[i] == '(') ++depth;
        if (r[i] == ')' && --depth == 0) break;
      }
      value = std::string(r.substr(start + 1, i - start - 1));
      ++i;
    } else if (r[i] == '"') {
      ++i;
      while (i < r.size() && r[i] != '"') {
        if (r[i] == '\\' && i + 1 < r.size()) ++i;
        value.push_back(r[i++]);
      }
      ++i;
    } else if (r[i] == '{') {
      size_t close = r.find('}', i);
      if (close == std::string_view::npos) return Status::Corruption("bad literal in FETCH");
      size_t n = std::strtoull(std::string(r.substr(i + 1, close - i - 1)).c_str(), nullptr, 10);
      i = close + 3;  // "}\r\n"
      if (i + n > r.size()) return Status::Corruption("short literal in FETCH");
      value = std::string(r.substr(i, n));
      i += n;
    } else {
      size_t end = i;
      while (end < r.size() && r[end] != ' ' && r[end] != ')') ++end;
      value = std::string(r.substr(i, end - i));
      i = end;
    }
    if (name == "UID") {
      m->uid = static_cast<uint32_t>(std::strtoul(value.c_str(), nullptr, 10));
    } else if (name == "FLAGS") {
      for (auto& f : SplitWords(value)) {
        if (f != "\\Recent") m->flags.push_back(f);
      }
    } else if (name == "INTERNALDATE") {
      m->internal_date_text = value;
      auto t = ParseImapDateTime(value);
      if (!t) return Status::Corruption("bad INTERNALDATE: " + value);
      m->internal_date = *t;
    } else if (name == "RFC822.SIZE") {
      m->size = std::strtoull(value.c_str(), nullptr, 10);
    } else if (name == "BODY[]") {
      m->text = std::move(value);
    }
  }
  m->message_id = HeaderValue(m->text, "Message-ID");
  return Status::Ok();
}

}  // namespace

Status CheckExactlyOnce(const std::vector<std::string>& expected, const MailboxCensus& census) {
  std::unordered_map<std::string, int> seen;
  for (const auto& m : census.messages) ++seen[m.message_id];
  std::set<std::string> want(expected.begin(), expected.end());
  std::string missing, dups, extra;
  int n_missing = 0, n_dups = 0, n_extra = 0;
  auto add = [](std::string* list, int* n, const std::string& id) {
    if (++*n <= 10) *list += (list->empty() ? "" : " ") + id;
  };
  for (const auto& id : want) {
    auto it = seen.find(id);
    if (it == seen.end()) {
      add(&missing, &n_missing, id);
    } else if (it->second > 1) {
      add(&dups, &n_dups, id + "x" + std::to_string(it->second));
    }
  }
  for (const auto& [id, n] : seen) {
    if (want.count(id) == 0) add(&extra, &n_extra, id.empty() ? "<no Message-ID>" : id);
  }
  if (n_missing > 0) {
    return Status::NotFound(std::to_string(n_missing) + " lost: " + missing);
  }
  if (n_dups > 0) {
    return Status::AlreadyExists(std::to_string(n_dups) + " duplicated: " + dups);
  }
  if (n_extra > 0) {
    return Status::Corruption(std::to_string(n_extra) + " unexpected: " + extra);
  }
  return Status::Ok();
}

void SweepStaleDovecotInstances() {
  for (const auto& base : TempBases()) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(base, ec)) {
      std::string name = e.path().filename().string();
      if (name.rfind(kDirPrefix, 0) != 0 || !e.is_directory(ec)) continue;
      std::string dir = e.path().string();
      int owner = ReadPid(dir + "/owner.pid");
      if (owner <= 0 || ProcessAlive(owner)) continue;
      int master = ReadPid(dir + "/dovecot.pid");
      // Only a process started with this directory's config is ours to kill.
      if (master > 0 && ProcCmdline(master).find(dir + "/dovecot.conf") != std::string::npos) {
        ::kill(-master, SIGKILL);
        ::kill(master, SIGKILL);
      }
      // Children of a dying master (log, anvil, imap) may still create files
      // for a moment, and then remove_all fails on a directory that is not
      // empty: try again for up to two seconds.
      for (int i = 0; i < 100; ++i) {
        fs::remove_all(dir, ec);
        if (!fs::exists(dir, ec)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
  }
}

Result<std::unique_ptr<DovecotFixture>> DovecotFixture::Start(DovecotOptions options) {
  std::unique_ptr<DovecotFixture> f(new DovecotFixture());
  f->options_ = std::move(options);
  f->dovecot_bin_ = FindBinary("dovecot");
  f->doveadm_bin_ = FindBinary("doveadm");
  if (f->dovecot_bin_.empty() || f->doveadm_bin_.empty()) {
    return Status::Unsupported(
        "Dovecot is not installed (need the dovecot and doveadm binaries from Debian's "
        "dovecot-core and dovecot-imapd): run tools/setup-deps.sh imap");
  }
  SweepStaleDovecotInstances();

  // Who Dovecot runs as: never root (its login and mail processes refuse
  // it), and the same user for every process so no chroot or setuid is needed.
  bool root = ::geteuid() == 0;
  if (root) {
    struct passwd* pw = ::getpwnam(f->options_.run_as.c_str());
    if (pw == nullptr) {
      return Status::InvalidArgument("run_as user '" + f->options_.run_as + "' does not exist");
    }
    if (pw->pw_uid == 0) return Status::InvalidArgument("run_as must not be root");
    f->run_uid_ = static_cast<int>(pw->pw_uid);
    f->run_gid_ = static_cast<int>(pw->pw_gid);
    f->run_user_ = pw->pw_name;
  } else {
    f->run_uid_ = static_cast<int>(::geteuid());
    f->run_gid_ = static_cast<int>(::getegid());
    struct passwd* pw = ::getpwuid(::geteuid());
    if (pw == nullptr) return Status::InvalidArgument("the current uid has no passwd entry");
    f->run_user_ = pw->pw_name;
  }
  struct group* gr = ::getgrgid(static_cast<gid_t>(f->run_gid_));
  f->run_group_ = gr != nullptr ? gr->gr_name : std::to_string(f->run_gid_);

  std::string base;
  for (const auto& b : TempBases()) {
    if (b.size() > kMaxBaseLength) continue;
    if (root && !TraversableByOthers(b)) continue;
    base = b;
    break;
  }
  if (base.empty()) return Status::IOError("no usable temp directory (TMPDIR and /tmp)");
  std::string tmpl = base + "/" + kDirPrefix + "XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return Status::FromErrno("mkdtemp", tmpl, errno);
  f->dir_ = tmpl;
  f->instance_name_ = fs::path(f->dir_).filename().string();
  ::chmod(f->dir_.c_str(), 0755);
  WXA_RETURN_IF_ERROR(
      WriteFileMode(f->dir_ + "/owner.pid", std::to_string(::getpid()) + "\n", 0644));
  f->config_path_ = f->dir_ + "/dovecot.conf";
  f->log_path_ = f->dir_ + "/dovecot.log";
  f->stderr_path_ = f->dir_ + "/dovecot.stderr";

  // Users and the master user; plaintext on purpose (test secrets only).
  std::string passwd;
  for (const auto& u : f->options_.users) passwd += u.name + ":{PLAIN}" + u.password + "\n";
  WXA_RETURN_IF_ERROR(WriteFileMode(f->dir_ + "/passwd", passwd, 0644));
  if (!f->options_.master.name.empty()) {
    WXA_RETURN_IF_ERROR(WriteFileMode(
        f->dir_ + "/masters", f->options_.master.name + ":{PLAIN}" + f->options_.master.password + "\n",
        0644));
  }
  std::vector<std::string> owned = {f->dir_};
  for (const char* d : {"/run", "/state", "/home", "/tls"}) {
    std::string p = f->dir_ + d;
    if (::mkdir(p.c_str(), 0755) != 0) return Status::FromErrno("mkdir", p, errno);
    owned.push_back(p);
  }
  for (const auto& u : f->options_.users) {
    std::string p = f->dir_ + "/home/" + u.name;
    if (::mkdir(p.c_str(), 0700) != 0) return Status::FromErrno("mkdir", p, errno);
    owned.push_back(p);
  }
  if (f->options_.tls) {
    WXA_ASSIGN_OR_RETURN(TestPki pki, MakeTestPki({"localhost"}, {"127.0.0.1", "::1"}));
    f->ca_file_ = f->dir_ + "/tls/ca.pem";
    WXA_RETURN_IF_ERROR(WriteFileMode(f->ca_file_, pki.ca_cert_pem, 0644));
    WXA_RETURN_IF_ERROR(WriteFileMode(f->dir_ + "/tls/ca.key", pki.ca_key_pem, 0600));
    WXA_RETURN_IF_ERROR(WriteFileMode(f->dir_ + "/tls/server.pem", pki.server_cert_pem, 0644));
    WXA_RETURN_IF_ERROR(WriteFileMode(f->dir_ + "/tls/server.key", pki.server_key_pem, 0600));
    owned.push_back(f->dir_ + "/tls/server.key");
  }
  if (root) {
    for (const auto& p : owned) {
      if (::chown(p.c_str(), static_cast<uid_t>(f->run_uid_), static_cast<gid_t>(f->run_gid_)) != 0) {
        return Status::FromErrno("chown", p, errno);
      }
    }
  }

  // Ports are found by binding port 0 and released for Dovecot to bind: a
  // race with another process is possible, so a bind failure retries.
  Status last;
  for (int attempt = 0; attempt < 4; ++attempt) {
    WXA_ASSIGN_OR_RETURN(f->imap_port_, FreeLoopbackPort());
    if (f->options_.tls) {
      do {
        WXA_ASSIGN_OR_RETURN(f->imaps_port_, FreeLoopbackPort());
      } while (f->imaps_port_ == f->imap_port_);
    }
    WXA_RETURN_IF_ERROR(f->WriteConfig());
    last = f->Launch(/*fresh_logs=*/true);
    if (last.ok()) last = f->WaitReady();
    if (last.ok()) return f;
    bool port_taken = f->LogTail(20).find("Address already in use") != std::string::npos;
    (void)f->StopProcess();
    if (!port_taken) break;
  }
  return last;
}

std::string DovecotFixture::CapabilityLine() const {
  const auto& o = options_;
  if (o.hide_capabilities.empty()) {
    if (o.append_limit > 0) return "imap_capability = +APPENDLIMIT=" + std::to_string(o.append_limit);
    return "";
  }
  // An explicit list replaces Dovecot's, pre- and post-login alike; Dovecot
  // then adds nothing of its own except STARTTLS and AUTH= before login.
  std::vector<std::string> caps = SplitWords(kDovecot23Capabilities);
  if (o.append_limit > 0) caps.push_back("APPENDLIMIT=" + std::to_string(o.append_limit));
  caps.push_back(o.literal_minus ? "LITERAL-" : "LITERAL+");
  caps.push_back("NOTIFY");
  std::string line = "imap_capability =";
  for (const auto& c : caps) {
    bool hidden = std::any_of(o.hide_capabilities.begin(), o.hide_capabilities.end(),
                              [&](const std::string& h) { return CapabilityMatches(c, h); });
    if (!hidden) line += " " + c;
  }
  return line;
}

Status DovecotFixture::WriteConfig() {
  const auto& o = options_;
  const std::string& d = dir_;
  std::ostringstream c;
  c << "# Written by wxa::test::DovecotFixture (tests/imap/dovecot_fixture.cc) for one test.\n"
    << "# Everything runs as " << run_user_ << ": no root, no chroot, no setuid.\n"
    << "base_dir = " << d << "/run\n"
    << "state_dir = " << d << "/state\n"
    << "instance_name = " << instance_name_ << "\n"
    << "log_path = " << log_path_ << "\n"
    << "auth_verbose = yes\n"
    << "protocols = imap\n"
    << "listen = 127.0.0.1\n"
    << "shutdown_clients = yes\n";
  if (o.tls) {
    c << "ssl = yes\n"
      << "ssl_cert = <" << d << "/tls/server.pem\n"
      << "ssl_key = <" << d << "/tls/server.key\n";
  } else {
    c << "ssl = no\n";
  }
  c << "disable_plaintext_auth = no\n"
    // Tests log in wrongly on purpose: no 2 s delay per failure (and no
    // per-IP penalty: see service anvil below).
    << "auth_failure_delay = 0\n"
    << "auth_mechanisms = plain login\n"
    << "auth_master_user_separator = *\n"
    << "default_internal_user = " << run_user_ << "\n"
    << "default_internal_group = " << run_group_ << "\n"
    << "default_login_user = " << run_user_ << "\n"
    << "first_valid_uid = 1\n"
    << "first_valid_gid = 1\n"
    << "mail_location = "
    << (o.storage == MailStorage::kMaildir ? "maildir:~/Maildir" : "mdbox:~/mdbox") << "\n"
    << "mail_fsync = " << o.mail_fsync << "\n"
    << "imap_literal_minus = " << (o.literal_minus ? "yes" : "no") << "\n";
  std::string caps = CapabilityLine();
  if (!caps.empty()) c << caps << "\n";
  c << "service imap-login {\n"
    << "  inet_listener imap {\n"
    << "    address = 127.0.0.1\n"
    << "    port = " << imap_port_ << "\n"
    << "  }\n";
  if (o.tls) {
    c << "  inet_listener imaps {\n"
      << "    address = 127.0.0.1\n"
      << "    port = " << imaps_port_ << "\n"
      << "    ssl = yes\n"
      << "  }\n";
  } else {
    // Dovecot's default imaps listener would take port 993 (or fail).
    c << "  inet_listener imaps {\n"
      << "    port = 0\n"
      << "  }\n";
  }
  c << "  chroot =\n"
    << "  process_limit = 512\n"
    << "}\n"
    << "service imap {\n"
    << "  process_limit = 512\n"
    << "}\n"
    << "service anvil {\n"
    << "  chroot =\n"
    // Dovecot's documented switch for the auth penalty (2, 4, 8... s per
    // failed login from one IP): auth cannot open this socket.
    << "  unix_listener anvil-auth-penalty {\n"
    << "    mode = 0\n"
    << "  }\n"
    << "}\n";
  if (!o.master.name.empty()) {
    // Checked first; pass = yes then looks the target user up in the next
    // passdb, so a master login for a user who does not exist fails.
    c << "passdb {\n"
      << "  driver = passwd-file\n"
      << "  args = scheme=PLAIN username_format=%u " << d << "/masters\n"
      << "  master = yes\n"
      << "  pass = yes\n"
      << "}\n";
  }
  c << "passdb {\n"
    << "  driver = passwd-file\n"
    << "  args = scheme=PLAIN username_format=%u " << d << "/passwd\n"
    << "}\n"
    << "userdb {\n"
    << "  driver = static\n"
    << "  args = uid=" << run_uid_ << " gid=" << run_gid_ << " home=" << d << "/home/%u\n"
    << "}\n"
    << "protocol imap {\n"
    << "  mail_max_userip_connections = " << o.max_userip_connections << "\n"
    << "}\n";
  if (o.append_limit > 0) {
    // Only the size check of the quota plugin is wanted: no storage limit.
    c << "mail_plugins = $mail_plugins quota\n"
      << "plugin {\n"
      << "  quota = count:User quota\n"
      << "  quota_vsizes = yes\n"
      << "  quota_rule = *:storage=0\n"
      << "  quota_max_mail_size = " << o.append_limit << "\n"
      << "}\n";
  }
  for (const auto& line : o.extra_config) c << line << "\n";
  return WriteFileMode(config_path_, c.str(), 0644);
}

std::string DovecotFixture::ConfigText() const { return ReadSmallFile(config_path_); }

Status DovecotFixture::Launch(bool fresh_logs) {
  // Everything the child needs is prepared before fork(): after it, only
  // async-signal-safe calls (the test process has threads).
  std::vector<std::string> argv_s = {dovecot_bin_, "-F", "-c", config_path_};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string env_path = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
  std::string env_tz = "TZ=UTC";
  char* envp[] = {env_path.data(), env_tz.data(), nullptr};
  // A retry after a port clash must not read the previous attempt's errors.
  if (fresh_logs) (void)::truncate(log_path_.c_str(), 0);
  int err_fd = ::open(stderr_path_.c_str(),
                      O_WRONLY | O_CREAT | O_CLOEXEC | (fresh_logs ? O_TRUNC : O_APPEND), 0644);
  if (err_fd < 0) return Status::FromErrno("open", stderr_path_, errno);
  int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  bool drop = ::geteuid() == 0;
  uid_t uid = static_cast<uid_t>(run_uid_);
  gid_t gid = static_cast<gid_t>(run_gid_);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(err_fd);
    ::close(devnull);
    return Status::FromErrno("fork", dovecot_bin_, e);
  }
  if (pid == 0) {
    ::setpgid(0, 0);  // one group: Stop() can kill every process Dovecot spawned
    // A parent that blocks signals (wxa_dovecot takes them via signalfd)
    // must not pass that on: the master has to see SIGTERM.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (drop) {
      if (::setgroups(1, &gid) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) _exit(126);
    }
    // After the credential change (which clears it): the master dies with us.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) _exit(125);
    ::dup2(devnull, 0);
    ::dup2(err_fd, 1);
    ::dup2(err_fd, 2);
    ::syscall(SYS_close_range, 3U, ~0U, 0U);
    ::execve(argv[0], argv.data(), envp);
    _exit(127);
  }
  ::close(err_fd);
  ::close(devnull);
  ::setpgid(pid, pid);  // also from here, so it holds before we signal the group
  pid_ = pid;
  return WriteFileMode(dir_ + "/dovecot.pid", std::to_string(pid) + "\n", 0644);
}

Status DovecotFixture::WaitReady() {
  auto deadline = std::chrono::steady_clock::now() + options_.start_timeout;
  Status last = Status::IOError("not tried");
  while (std::chrono::steady_clock::now() < deadline) {
    int st;
    pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      std::string how = WIFEXITED(st) ? "exited with " + std::to_string(WEXITSTATUS(st))
                                      : "died of signal " + std::to_string(WTERMSIG(st));
      return Status::IOError("dovecot " + how + " during startup:\n" + LogTail(20));
    }
    auto client = ImapTestClient::Connect(imap_port_, nullptr, 2000);
    if (client.ok()) {
      // A login proves auth and the imap process work, not just the listener.
      if (options_.users.empty()) return Status::Ok();
      auto c2 = LoginClient(options_.users[0].name);
      if (c2.ok()) {
        (void)(*c2)->Command("LOGOUT");
        if (!options_.tls) return Status::Ok();
        ImapTlsOptions tls{ca_file_, "127.0.0.1"};
        auto c3 = ImapTestClient::Connect(imaps_port_, &tls, 2000);
        if (c3.ok()) return Status::Ok();
        last = c3.status();
      } else {
        last = c2.status();
      }
    } else {
      last = client.status();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return Status::IOError("dovecot did not become ready in " +
                         std::to_string(options_.start_timeout.count()) +
                         " ms (last: " + last.ToString() + "):\n" + LogTail(20));
}

DovecotFixture::~DovecotFixture() { (void)Stop(); }

Status DovecotFixture::Stop() {
  Status result = StopProcess();
  if (!dir_.empty() && !options_.keep_dir && std::getenv("WXA_KEEP_DOVECOT") == nullptr) {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  return result;
}

Status DovecotFixture::StopProcess() { return Signal(/*graceful=*/true); }

Status DovecotFixture::Kill() { return Signal(/*graceful=*/false); }

Status DovecotFixture::Signal(bool graceful) {
  if (pid_ <= 0) return Status::Ok();
  // SIGTERM to the whole group at once: signalled alone, the master spends
  // about a second waiting for its children. Whatever is still alive after
  // kGraceMs is killed (rarely needed; the data is throw-away anyway).
  constexpr int kGraceMs = 500;
  if (graceful) {
    ::kill(-pid_, SIGTERM);
    // Wait for the master without reaping it: while it is a zombie its pid
    // (= the process group id) cannot be reused, so killing the group below
    // can only hit Dovecot's own stragglers.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kGraceMs);
    while (std::chrono::steady_clock::now() < deadline) {
      siginfo_t info{};
      if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == pid_) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  ::kill(-pid_, SIGKILL);
  int st;
  while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  // Children of the group may outlive the master for a moment; they are
  // SIGKILLed already and hold no port once gone.
  return Status::Ok();
}

Status DovecotFixture::Restart() {
  WXA_RETURN_IF_ERROR(StopProcess());
  WXA_RETURN_IF_ERROR(Launch(/*fresh_logs=*/false));
  return WaitReady();
}

std::string DovecotFixture::mail_dir(const std::string& user) const {
  return dir_ + "/home/" + user +
         (options_.storage == MailStorage::kMaildir ? "/Maildir" : "/mdbox");
}

std::string DovecotFixture::LogTail(size_t lines) const {
  std::string out = Tail(ReadSmallFile(log_path_), lines);
  std::string err = ReadSmallFile(stderr_path_);
  if (!err.empty()) out += "--- dovecot stderr ---\n" + Tail(err, lines);
  return out;
}

Result<std::string> DovecotFixture::Doveadm(const std::vector<std::string>& args) const {
  std::vector<std::string> argv = {doveadm_bin_, "-c", config_path_};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string out, err;
  int rc = 0;
  WXA_RETURN_IF_ERROR(RunCapture(argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TZ=UTC"},
                                 std::chrono::seconds(120), &out, &err, &rc));
  if (rc != 0) {
    std::string cmd;
    for (const auto& a : args) cmd += " " + a;
    return Status::IOError("doveadm" + cmd + " exited with " + std::to_string(rc) + ": " + err);
  }
  return out;
}

Result<std::vector<std::map<std::string, std::string>>> DovecotFixture::DoveadmFetch(
    const std::string& user, const std::vector<std::string>& fields, const std::string& mailbox,
    const std::string& query) const {
  std::string joined;
  for (const auto& f : fields) joined += (joined.empty() ? "" : " ") + f;
  std::vector<std::string> args = {"-f", "tab", "fetch", "-u", user, joined, "mailbox", mailbox};
  for (auto& w : SplitWords(query)) args.push_back(w);
  WXA_ASSIGN_OR_RETURN(std::string out, Doveadm(args));
  std::vector<std::map<std::string, std::string>> rows;
  std::istringstream in(out);
  std::string line;
  std::vector<std::string> header;
  auto split_tabs = [](const std::string& l) {
    std::vector<std::string> v;
    size_t s = 0;
    for (;;) {
      size_t t = l.find('\t', s);
      v.push_back(l.substr(s, t == std::string::npos ? std::string::npos : t - s));
      if (t == std::string::npos) break;
      s = t + 1;
    }
    return v;
  };
  while (std::getline(in, line)) {
    if (header.empty()) {
      header = split_tabs(line);
      continue;
    }
    auto vals = split_tabs(line);
    std::map<std::string, std::string> row;
    for (size_t i = 0; i < header.size(); ++i) row[header[i]] = i < vals.size() ? vals[i] : "";
    rows.push_back(std::move(row));
  }
  return rows;
}

Result<std::vector<std::string>> DovecotFixture::ListMailboxes(const std::string& user) const {
  WXA_ASSIGN_OR_RETURN(std::string out, Doveadm({"mailbox", "list", "-u", user}));
  std::vector<std::string> names;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) names.push_back(line);
  }
  return names;
}

Result<uint64_t> DovecotFixture::MessageCount(const std::string& user,
                                              const std::string& mailbox) const {
  WXA_ASSIGN_OR_RETURN(std::string out,
                       Doveadm({"mailbox", "status", "-u", user, "messages", mailbox}));
  size_t eq = out.find("messages=");
  if (eq == std::string::npos) return Status::Corruption("doveadm mailbox status: " + out);
  return static_cast<uint64_t>(std::strtoull(out.c_str() + eq + 9, nullptr, 10));
}

Result<std::unique_ptr<ImapTestClient>> DovecotFixture::LoginClient(const std::string& user) const {
  WXA_ASSIGN_OR_RETURN(auto c, ImapTestClient::Connect(imap_port_, nullptr, 30000));
  if (!options_.master.name.empty()) {
    WXA_RETURN_IF_ERROR(c->AuthenticatePlain(user, options_.master.name, options_.master.password));
    return c;
  }
  for (const auto& u : options_.users) {
    if (u.name == user) {
      WXA_RETURN_IF_ERROR(c->Login(u.name, u.password));
      return c;
    }
  }
  return Status::NotFound("no password for user " + user + " and no master user");
}

Result<MailboxCensus> DovecotFixture::Census(const std::string& user,
                                             const std::string& mailbox) const {
  WXA_ASSIGN_OR_RETURN(auto c, LoginClient(user));
  WXA_ASSIGN_OR_RETURN(ImapReply ex, c->Command("EXAMINE " + ImapQuote(mailbox)));
  if (!ex.ok()) {
    std::string msg = "EXAMINE " + mailbox + " for " + user + ": " + ex.status;
    // Dovecot 2.3 answers EXAMINE of a missing folder without [NONEXISTENT].
    if (ex.status.find("NONEXISTENT") != std::string::npos ||
        ex.status.find("doesn't exist") != std::string::npos) {
      return Status::NotFound(msg);
    }
    return Status::IOError(msg);
  }
  MailboxCensus census;
  for (const auto& u : ex.untagged) {
    size_t p = u.find("[UIDVALIDITY ");
    if (p != std::string::npos) census.uidvalidity = static_cast<uint32_t>(std::strtoul(u.c_str() + p + 13, nullptr, 10));
  }
  WXA_ASSIGN_OR_RETURN(ImapReply f,
                       c->Command("UID FETCH 1:* (UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"));
  if (!f.ok()) return Status::IOError("UID FETCH in " + mailbox + ": " + f.status);
  for (const auto& u : f.untagged) {
    if (u.find(" FETCH (") == std::string::npos) continue;
    StoredMessage m;
    WXA_RETURN_IF_ERROR(ParseFetch(u, &m));
    census.messages.push_back(std::move(m));
  }
  std::sort(census.messages.begin(), census.messages.end(),
            [](const StoredMessage& a, const StoredMessage& b) { return a.uid < b.uid; });
  (void)c->Command("LOGOUT");
  return census;
}

}  // namespace wxa::test
