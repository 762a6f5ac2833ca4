// wxa_fake_graph: the fake Graph server as a process, for benches and CLI
// tests. Prints the port on the first stdout line, serves until SIGTERM or
// SIGINT, then prints the stats JSON (also served at GET /_fake/stats).
//
//   wxa_fake_graph --mailbox a@contoso.test --mailbox b@contoso.test
//       --app my-client:my-secret --max-concurrent 4 --fail-every 7
//
// Every flag takes "--flag value" or "--flag=value"; --help lists them.
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/graph/fake_graph_server.h"

namespace {

using wxa::test::FakeGraphServer;
using wxa::test::FakeGraphServerOptions;

struct Flag {
  const char* name;
  const char* help;
  std::function<bool(const std::string&)> set;  // false: bad value
  bool takes_value = true;
};

bool ToU64(const std::string& s, uint64_t* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  *out = std::strtoull(s.c_str(), &end, 10);
  return *end == '\0';
}
bool ToInt(const std::string& s, int* out) {
  uint64_t v;
  if (!ToU64(s, &v) || v > 1u << 30) return false;
  *out = int(v);
  return true;
}
bool ToDouble(const std::string& s, double* out) {
  char* end = nullptr;
  *out = std::strtod(s.c_str(), &end);
  return !s.empty() && *end == '\0' && *out >= 0 && *out <= 1;
}
bool ReadWholeFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  FakeGraphServerOptions o;
  auto& lim = o.limits;
  auto& f = o.faults;
  std::string port_file, stats_file;
  int mailbox_count = 0;
  std::string mailbox_domain = "contoso.test";
  bool show_help = false;

  auto ms = [](std::chrono::milliseconds* d) {
    return [d](const std::string& v) {
      uint64_t n;
      if (!ToU64(v, &n)) return false;
      *d = std::chrono::milliseconds(n);
      return true;
    };
  };
  auto u64 = [](uint64_t* p) { return [p](const std::string& v) { return ToU64(v, p); }; };
  auto i32 = [](int* p) { return [p](const std::string& v) { return ToInt(v, p); }; };
  auto prob = [](double* p) { return [p](const std::string& v) { return ToDouble(v, p); }; };
  auto str = [](std::string* p) { return [p](const std::string& v) { *p = v; return true; }; };

  std::vector<Flag> flags = {
      {"host", "listen address (127.0.0.1)", str(&o.host)},
      {"port", "port (0: ephemeral)", [&](const std::string& v) {
         int p;
         if (!ToInt(v, &p) || p > 65535) return false;
         o.port = uint16_t(p);
         return true;
       }},
      {"threads", "io threads (4)", i32(&o.io_threads)},
      {"port-file", "also write the port to this file", str(&port_file)},
      {"stats-file", "write the final stats JSON to this file", str(&stats_file)},
      {"tenant", "tenant id", str(&o.tenant)},
      {"mailbox", "a mailbox UPN (repeat, or comma-separated)", [&](const std::string& v) {
         std::stringstream ss(v);
         std::string one;
         while (std::getline(ss, one, ',')) {
           if (!one.empty()) o.mailboxes.push_back({one, "", ""});
         }
         return true;
       }},
      {"mailbox-count", "also create user0..userN-1@<mailbox-domain>", i32(&mailbox_count)},
      {"mailbox-domain", "domain for --mailbox-count (contoso.test)", str(&mailbox_domain)},
      {"app", "CLIENT_ID:SECRET (repeat); default test-client:test-secret", [&](const std::string& v) {
         size_t c = v.find(':');
         if (c == std::string::npos) return false;
         o.apps.push_back({v.substr(0, c), v.substr(c + 1), ""});
         return true;
       }},
      {"app-key", "CLIENT_ID:PEM_FILE, a public key for JWT assertions", [&](const std::string& v) {
         size_t c = v.find(':');
         if (c == std::string::npos) return false;
         std::string pem;
         if (!ReadWholeFile(v.substr(c + 1), &pem)) return false;
         for (auto& a : o.apps) {
           if (a.client_id == v.substr(0, c)) {
             a.public_key_pem = pem;
             return true;
           }
         }
         o.apps.push_back({v.substr(0, c), "", pem});
         return true;
       }},
      {"token-lifetime", "expires_in of tokens, seconds (3599)", i32(&o.token_lifetime_s)},
      {"folder-exists-status", "400 or 409 (400)", i32(&o.folder_exists_status)},
      {"allow-attachments-on-mime", "allow attachments on importMime items", [&](const std::string&) {
         o.allow_attachments_on_mime_items = true;
         return true;
       }, false},
      {"no-raw", "do not keep raw MIME/JSON of items", [&](const std::string&) {
         o.keep_raw = false;
         return true;
       }, false},
      {"observe", "count violations but serve the requests anyway", [&](const std::string&) {
         lim.enforce = false;
         return true;
       }, false},
      {"max-concurrent", "concurrent requests per app x mailbox (4)", i32(&lim.max_concurrent)},
      {"concurrency-scope", "mailbox | app", [&](const std::string& v) {
         if (v == "mailbox") lim.concurrency_scope = wxa::test::FakeGraphConcurrencyScope::kPerAppAndMailbox;
         else if (v == "app") lim.concurrency_scope = wxa::test::FakeGraphConcurrencyScope::kPerApp;
         else return false;
         return true;
       }},
      {"concurrency-retry-after", "Retry-After seconds on a concurrency 429 (1)", i32(&lim.concurrency_retry_after_s)},
      {"request-budget", "requests per window (10000)", u64(&lim.request_budget)},
      {"request-window-ms", "request window (600000)", ms(&lim.request_window)},
      {"upload-budget-bytes", "upload bytes per window (150000000)", u64(&lim.upload_budget_bytes)},
      {"upload-window-ms", "upload window (300000)", ms(&lim.upload_window)},
      {"window", "sliding | fixed", [&](const std::string& v) {
         if (v == "sliding") lim.window_kind = wxa::test::FakeGraphWindow::kSliding;
         else if (v == "fixed") lim.window_kind = wxa::test::FakeGraphWindow::kFixed;
         else return false;
         return true;
       }},
      {"max-body-bytes", "request body cap, 413 above (4194304)", u64(&lim.max_request_body_bytes)},
      {"min-upload-session-bytes", "smallest createUploadSession size (3145728)", u64(&lim.min_upload_session_bytes)},
      {"max-message-bytes", "largest item (36700160)", u64(&lim.max_message_bytes)},
      {"page-size", "default page size (10)", i32(&lim.default_page_size)},
      {"seed", "fault RNG seed (1)", u64(&f.seed)},
      {"fault-path", "faults only for paths containing this", str(&f.path_filter)},
      {"fault-method", "faults only for this method", str(&f.method_filter)},
      {"fail-status", "injected error status (503)", i32(&f.error_status)},
      {"fail-every", "inject the error every Nth request", u64(&f.error.every_nth)},
      {"fail-prob", "inject the error with this probability", prob(&f.error.probability)},
      {"fail-retry-after", "Retry-After seconds of injected errors (1)", i32(&f.error_retry_after_s)},
      {"fail-no-retry-after", "send injected errors without Retry-After", [&](const std::string&) {
         f.error_retry_after = false;
         return true;
       }, false},
      {"delay-ms", "slow-reply delay", ms(&f.delay_by)},
      {"delay-every", "delay every Nth request", u64(&f.delay.every_nth)},
      {"delay-prob", "delay with this probability", prob(&f.delay.probability)},
      {"drop-before-every", "drop the connection before processing, every Nth", u64(&f.drop_before.every_nth)},
      {"drop-before-prob", "... with this probability", prob(&f.drop_before.probability)},
      {"drop-after-every", "drop after processing (item stored, no reply), every Nth", u64(&f.drop_after.every_nth)},
      {"drop-after-prob", "... with this probability", prob(&f.drop_after.probability)},
      {"expire-tokens-every", "expire all tokens every N Graph requests", u64(&f.expire_tokens_every_n)},
      {"help", "this list", [&](const std::string&) {
         show_help = true;
         return true;
       }, false},
  };

  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      std::fprintf(stderr, "wxa_fake_graph: unexpected argument %s\n", arg.c_str());
      return 2;
    }
    std::string name = arg.substr(2), value;
    bool inline_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
      inline_value = true;
    }
    const Flag* flag = nullptr;
    for (const auto& fl : flags) {
      if (name == fl.name) flag = &fl;
    }
    if (!flag) {
      std::fprintf(stderr, "wxa_fake_graph: unknown flag --%s (try --help)\n", name.c_str());
      return 2;
    }
    if (flag->takes_value && !inline_value) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "wxa_fake_graph: --%s needs a value\n", name.c_str());
        return 2;
      }
      value = argv[++i];
    }
    if (!flag->set(value)) {
      std::fprintf(stderr, "wxa_fake_graph: bad value for --%s: %s\n", name.c_str(), value.c_str());
      return 2;
    }
  }
  if (show_help) {
    std::printf("wxa_fake_graph: a local Microsoft Graph look-alike (tests/graph/README.md)\n");
    for (const auto& fl : flags) std::printf("  --%-26s %s\n", fl.name, fl.help);
    return 0;
  }
  for (int i = 0; i < mailbox_count; ++i) {
    o.mailboxes.push_back({"user" + std::to_string(i) + "@" + mailbox_domain, "", ""});
  }
  if (o.apps.empty()) o.apps.push_back({"test-client", "test-secret", ""});

  // A reader that goes away must not kill the server mid-run.
  signal(SIGPIPE, SIG_IGN);
  // Block the stop signals before any thread starts, so only sigwait sees them.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);

  FakeGraphServer server;
  wxa::Status st = server.Start(o);
  if (!st.ok()) {
    std::fprintf(stderr, "wxa_fake_graph: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("%u\n", unsigned(server.port()));
  std::fflush(stdout);
  if (!port_file.empty()) {
    std::ofstream(port_file) << server.port() << "\n";
  }
  int sig = 0;
  sigwait(&stop, &sig);
  server.Stop();
  std::string stats = server.StatsJson();
  std::printf("%s\n", stats.c_str());
  if (!stats_file.empty()) std::ofstream(stats_file) << stats << "\n";
  return 0;
}
