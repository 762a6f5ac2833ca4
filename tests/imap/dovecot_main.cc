// wxa_dovecot: a DovecotFixture as a standalone process, for benches and
// manual runs. Prints one JSON line (ports, CA file, paths, credentials)
// once Dovecot is ready, then runs until SIGINT/SIGTERM/SIGHUP (or EOF on
// stdin with --until-stdin-eof) and stops it.
//
//   wxa_dovecot [--storage mdbox|maildir] [--user NAME:PASSWORD]...
//               [--users-from MAILDIR_ROOT] [--password PW]
//               [--master NAME:PASSWORD | --no-master] [--hide CAP[,CAP...]]
//               [--literal-minus] [--append-limit BYTES] [--no-tls]
//               [--fsync optimized|always|never] [--config-line LINE]...
//               [--max-userip N] [--keep] [--until-stdin-eof]
//
// --users-from makes one user per subdirectory of a Maildir tree written
// by the engine (the mailbox directory names), all with --password (default "pw").
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "tests/imap/dovecot_fixture.h"
#include "tests/imap/imap_test_client.h"

namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out.push_back(c);
        }
    }
  }
  return out + "\"";
}

int Usage(const std::string& why) {
  std::cerr << "wxa_dovecot: " << why << "\n(see the comment at the top of tests/imap/dovecot_main.cc)\n";
  return 2;
}

bool SplitPair(const std::string& s, wxa::test::DovecotUser* u) {
  size_t c = s.find(':');
  if (c == std::string::npos || c == 0) return false;
  u->name = s.substr(0, c);
  u->password = s.substr(c + 1);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using wxa::test::DovecotFixture;
  using wxa::test::DovecotOptions;
  DovecotOptions o;
  o.users.clear();
  std::string users_from;
  std::string password = "pw";
  bool until_eof = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::exit(Usage(a + " needs a value"));
      }
      return argv[++i];
    };
    if (a == "--storage") {
      std::string v = next();
      if (v == "mdbox") {
        o.storage = wxa::test::MailStorage::kMdbox;
      } else if (v == "maildir") {
        o.storage = wxa::test::MailStorage::kMaildir;
      } else {
        return Usage("--storage must be mdbox or maildir");
      }
    } else if (a == "--user") {
      wxa::test::DovecotUser u;
      if (!SplitPair(next(), &u)) return Usage("--user wants NAME:PASSWORD");
      o.users.push_back(u);
    } else if (a == "--users-from") {
      users_from = next();
    } else if (a == "--password") {
      password = next();
    } else if (a == "--master") {
      if (!SplitPair(next(), &o.master)) return Usage("--master wants NAME:PASSWORD");
    } else if (a == "--no-master") {
      o.master = {};
    } else if (a == "--hide") {
      std::string v = next();
      size_t s = 0;
      while (s <= v.size()) {
        size_t c = v.find(',', s);
        std::string cap = v.substr(s, c == std::string::npos ? std::string::npos : c - s);
        if (!cap.empty()) o.hide_capabilities.push_back(cap);
        if (c == std::string::npos) break;
        s = c + 1;
      }
    } else if (a == "--literal-minus") {
      o.literal_minus = true;
    } else if (a == "--append-limit") {
      o.append_limit = std::strtoull(next().c_str(), nullptr, 10);
    } else if (a == "--no-tls") {
      o.tls = false;
    } else if (a == "--fsync") {
      o.mail_fsync = next();
    } else if (a == "--config-line") {
      o.extra_config.push_back(next());
    } else if (a == "--max-userip") {
      o.max_userip_connections = std::atoi(next().c_str());
    } else if (a == "--keep") {
      o.keep_dir = true;
    } else if (a == "--until-stdin-eof") {
      until_eof = true;
    } else {
      return Usage("unknown argument " + a);
    }
  }
  if (!users_from.empty()) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(users_from, ec)) {
      std::string name = e.path().filename().string();
      // Not a mailbox: the engine's index (.wxarchiver) and other dot-dirs.
      if (e.is_directory(ec) && name[0] != '.') o.users.push_back({name, password});
    }
    if (ec) return Usage("cannot list " + users_from + ": " + ec.message());
  }
  if (o.users.empty()) o.users.push_back({"u1", password});

  // Signals are taken through a signalfd, so they are blocked before any
  // thread or child exists (the master resets its own mask).
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC);

  auto started = DovecotFixture::Start(o);
  if (!started.ok()) {
    std::cerr << "wxa_dovecot: " << started.status().ToString() << "\n";
    return 1;
  }
  auto& f = *started;
  std::string users_json;
  for (const auto& u : o.users) {
    users_json += (users_json.empty() ? "" : ",") + std::string("{\"name\":") + JsonString(u.name) +
                  ",\"password\":" + JsonString(u.password) + "}";
  }
  std::cout << "{\"imap_port\":" << f->imap_port() << ",\"imaps_port\":" << f->imaps_port()
            << ",\"ca_file\":" << JsonString(f->ca_file()) << ",\"config\":" << JsonString(f->config_path())
            << ",\"dir\":" << JsonString(f->dir()) << ",\"log\":" << JsonString(f->log_path())
            << ",\"storage\":\"" << (o.storage == wxa::test::MailStorage::kMdbox ? "mdbox" : "maildir")
            << "\",\"master_user\":" << JsonString(o.master.name)
            << ",\"master_password\":" << JsonString(o.master.password) << ",\"users\":[" << users_json
            << "],\"pid\":" << getpid() << "}" << std::endl;

  pollfd fds[2] = {{sfd, POLLIN, 0}, {until_eof ? 0 : -1, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) continue;
    if (fds[0].revents & POLLIN) break;
    if (fds[1].fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP))) {
      char buf[4096];
      if (read(0, buf, sizeof buf) <= 0) break;
    }
  }
  wxa::Status s = f->Stop();
  if (!s.ok()) std::cerr << "wxa_dovecot: " << s.ToString() << "\n";
  return 0;
}
