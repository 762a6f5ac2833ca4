#!/usr/bin/env python3
"""Graph target benchmark (issue #11): wxarchiver import --to graph: against the
local Graph look-alike (tests/graph, wxa_fake_graph) enforcing Graph's per-mailbox
limits at their real *rates* over shorter windows (default: 500 requests per 30 s =
10,000 per 10 min; 7.5 MB per 15 s = 150 MB per 5 min).

Reports, per mailbox and overall: requests in one full steady-state window after
the first (the share of the budget used), 429s, violations counted by the server,
failed deliveries, and the client's CPU per item.

  bench/graph/run_bench.py --build build-graph [--users 12 --days 3 --rate 250]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build-graph")
    ap.add_argument("--work", default="")
    ap.add_argument("--users", type=int, default=12)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--rate", type=float, default=250)
    ap.add_argument("--request-budget", type=int, default=500)
    ap.add_argument("--request-window-s", type=float, default=30)
    ap.add_argument("--upload-budget", type=int, default=7_500_000)
    ap.add_argument("--upload-window-s", type=float, default=15)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--mode", choices=("importmime", "extprops"), default="importmime")
    a = ap.parse_args()

    cli = os.path.join(a.build, "wxarchiver")
    fake = os.path.join(a.build, "tests/graph/wxa_fake_graph")
    work = a.work or tempfile.mkdtemp(prefix="wxa-graph-bench-")
    corpus = os.path.join(work, "corpus")
    if not os.path.isdir(corpus):
        subprocess.run([cli, "gen", "--out", corpus, "--users", str(a.users), "--days", str(a.days),
                        "--rate", str(a.rate), "--media-scale", "0.01", "--clean", "--seed", "5"],
                       check=True, stdout=subprocess.DEVNULL)
    mailboxes = [l.strip() for l in open(os.path.join(corpus, "mailboxes.txt"))
                 if "@" in l and not l.startswith("#")]
    secret = os.path.join(work, "secret")
    with open(secret, "w") as f:
        f.write("bench-secret\n")
    for d in ("index",):
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    port_file = os.path.join(work, "port")
    if os.path.exists(port_file):
        os.remove(port_file)
    srv = subprocess.Popen([fake, "--port-file", port_file, "--no-raw", "--app", "bench-client:bench-secret",
                            "--mailbox", ",".join(mailboxes),
                            "--request-budget", str(a.request_budget),
                            "--request-window-ms", str(int(a.request_window_s * 1000)),
                            "--upload-budget-bytes", str(a.upload_budget),
                            "--upload-window-ms", str(int(a.upload_window_s * 1000))],
                           stdout=subprocess.DEVNULL)
    while not os.path.exists(port_file) or not open(port_file).read().strip():
        time.sleep(0.05)
    base = "http://127.0.0.1:" + open(port_file).read().strip()

    def stats():
        return json.load(urllib.request.urlopen(base + "/_fake/stats"))

    cmd = [cli, "import", "--quiet", "--source", corpus, "--directory", corpus + "/directory.csv",
           "--mapping", corpus + "/mapping.csv", "--mailboxes", corpus + "/mailboxes.txt", "--to", "graph:",
           "--index", os.path.join(work, "index"), "--report", os.path.join(work, "report.json"),
           "--graph-tenant", "11111111-2222-3333-4444-555555555555", "--graph-client-id", "bench-client",
           "--graph-secret-file", secret, "--graph-login-url", base, "--graph-url", base,
           "--connections", str(a.connections), "--graph-mode", a.mode,
           "--graph-request-budget", f"{a.request_budget}/{a.request_window_s}",
           "--graph-upload-budget", f"{a.upload_budget}/{a.upload_window_s}"]
    print("$", " ".join(cmd), file=sys.stderr)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(cmd)
    samples = []  # (t, {mailbox: requests})
    while p.poll() is None:
        s = stats()
        samples.append((time.monotonic() - t0, {m: v["requests"] for m, v in s["mailboxes"].items()}))
        time.sleep(0.25)
    elapsed = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    final = stats()
    srv.terminate()
    srv.wait()
    report = json.load(open(os.path.join(work, "report.json")))
    c = report["counts"]

    W = a.request_window_s

    def at(t, m):
        best = 0
        for ts, v in samples:
            if ts <= t:
                best = v.get(m, 0)
        return best

    print(f"\nrc={p.returncode} elapsed {elapsed:.1f} s, deliveries {c['deliveries']}, failed {c['deliveries_failed']}, "
          f"retries {c['retries']}, server violations {final['total_violations']}")
    print(f"client CPU {cpu:.2f} s = {1e6 * cpu / max(1, c['deliveries']):.0f} us per delivery "
          f"({c['deliveries'] / elapsed:.0f} deliveries/s over {len(mailboxes)} mailboxes)")
    print(f"\n| mailbox | requests | 429s | violations | peak in flight | requests in window 2 "
          f"[W, 2W) | budget used |")
    print("|---|---|---|---|---|---|---|")
    utils = []
    for m in mailboxes:
        s = final["mailboxes"].get(m)
        if not s:
            continue
        first = next((ts for ts, v in samples if v.get(m, 0) > 0), None)
        util = ""
        if first is not None and s["requests"] > 2.2 * a.request_budget:
            n = at(first + 2 * W, m) - at(first + W, m)
            util = f"{100.0 * n / a.request_budget:.1f}%"
            utils.append(n / a.request_budget)
            win = str(n)
        else:
            win = "(finished early)"
        print(f"| {m} | {s['requests']} | {s['throttled']} | {s['total_violations']} | {s['peak_concurrency']} "
              f"| {win} | {util} |")
    if utils:
        print(f"\nsteady-state budget use: min {100 * min(utils):.1f}%, mean {100 * sum(utils) / len(utils):.1f}% "
              f"over {len(utils)} mailboxes (window {W:.0f} s, budget {a.request_budget}; "
              f"sampling every 0.25 s)")
    return 0 if p.returncode == 0 and final["total_violations"] == 0 and c["deliveries_failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
