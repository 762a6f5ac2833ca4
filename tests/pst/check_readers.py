#!/usr/bin/env python3
"""Independent check of a PST with readpst (libpst) and pffexport (libpff).

Usage: check_readers.py EXPECTED.json FILE.pst WORKDIR
EXPECTED.json: {"store": name, "folders": {path: [message, ...]}} where a
message has subject, body_plain, body_html, headers (list of "Name: value"),
message_id, sender_name, sender_address, display_to, display_cc, sent_s,
recipients [[name, address, type]], attachments [[filename, sha256, size]].
Both tools must exit 0 with nothing on stderr; what they extract must match.
Exit 0 when everything matches; otherwise the differences go to stdout.
"""
import email
import email.header
import email.policy
import email.utils
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone

problems = []


def problem(msg):
    problems.append(msg)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        problem("%s exited %d: %s" % (cmd[0], p.returncode, p.stderr.decode(errors="replace")[:2000]))
    if p.stderr.strip():
        problem("%s wrote to stderr: %s" % (cmd[0], p.stderr.decode(errors="replace")[:2000]))


def bmp_only(s):
    # libpff 20180714 decodes UTF-16 surrogate pairs wrongly; compare the rest.
    return "".join(c if ord(c) < 0x10000 else "?" for c in s)


def pff_subject(s):
    # libpff 20180714 also garbles the first character of a subject when it
    # is not ASCII (its subject-prefix handling); readpst gets it right.
    s = bmp_only(s)
    return s[1:] if s and ord(s[0]) > 0x7F else s


def norm_body(s):
    return s.replace("\r\n", "\n").rstrip("\n")


def hdr(m, name):
    v = m.get(name)
    if v is None:
        return ""
    return str(email.header.make_header(email.header.decode_header(str(v))))


def text_of(part):
    data = part.get_payload(decode=True) or b""
    return data.decode(part.get_content_charset() or "utf-8", errors="replace")


def check_readpst(exp, pst, work):
    out = os.path.join(work, "readpst")
    os.makedirs(out, exist_ok=True)
    # -j 0: readpst's parallel mode loses files of big folders (a readpst race).
    run(["readpst", "-j", "0", "-e", "-q", "-o", out, pst])
    found = {}
    for root, _, files in os.walk(out):
        for fn in files:
            if not fn.endswith(".eml"):
                continue
            rel = os.path.relpath(root, os.path.join(out, exp["store"]))
            with open(os.path.join(root, fn), "rb") as f:
                raw = f.read()
            # compat32 is ten times faster than the default policy on
            # thousands of messages; headers are decoded by hand below.
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            msg.raw_bytes = raw
            found.setdefault(rel, []).append(msg)
    for path, msgs in exp["folders"].items():
        got = found.get(path, [])
        if len(got) != len(msgs):
            problem("readpst: folder %r has %d messages, expected %d" % (path, len(got), len(msgs)))
            continue
        by_id = {hdr(m, "Message-Id").strip(): m for m in got}
        for e in msgs:
            m = by_id.get(e["message_id"])
            if m is None:
                problem("readpst: message %r missing" % e["message_id"])
                continue
            where = "readpst %s: " % e["message_id"]
            if hdr(m, "Subject") != e["subject"]:
                problem(where + "subject %r != %r" % (hdr(m, "Subject"), e["subject"]))
            name, addr = email.utils.parseaddr(hdr(m, "From"))
            if addr != e["sender_address"] or name != e["sender_name"]:
                problem(where + "from %r %r" % (name, addr))
            if e["sent_s"]:
                d = email.utils.parsedate_to_datetime(str(m["Date"]))
                if int(d.timestamp()) != e["sent_s"]:
                    problem(where + "date %s" % m["Date"])
            # readpst writes To from PidTagDisplayTo, quoted, and only the
            # first name when there are several.
            to = hdr(m, "To").strip('"')
            if e["display_to"] and not e["display_to"].startswith(to):
                problem(where + "to %r != %r" % (to, e["display_to"]))
            items = [(k.lower(), str(v).strip()) for k, v in m.items()]
            for h in e["headers"]:
                k, v = h.split(":", 1)
                if (k.lower(), v.strip()) not in items:
                    problem(where + "header %r not kept" % h)
            plain = html = None
            atts = []
            if e["attachments"]:  # RFC 2231 file names need the modern policy
                full = email.message_from_bytes(m.raw_bytes, policy=email.policy.default)
                for part in full.walk():
                    fn = None if part.is_multipart() else part.get_filename()
                    if fn is not None:
                        data = part.get_payload(decode=True) or b""
                        atts.append([fn, hashlib.sha256(data).hexdigest(), len(data)])
            for part in m.walk():
                if part.is_multipart() or part.get_filename() is not None:
                    continue
                if part.get_content_type() == "text/plain" and plain is None:
                    plain = text_of(part)
                elif part.get_content_type() == "text/html" and html is None:
                    html = text_of(part)
            if e["body_plain"] and norm_body(plain or "") != norm_body(e["body_plain"]):
                problem(where + "plain body differs: %r" % (plain or "")[:200])
            if e["body_html"] and norm_body(html or "") != norm_body(e["body_html"]):
                problem(where + "html body differs: %r" % (html or "")[:200])
            # readpst emits attachments in reverse order.
            if sorted(atts) != sorted(e["attachments"]):
                problem(where + "attachments %r != %r" % (atts[:3], e["attachments"][:3]))


def read_kv(path):
    kv = {}
    if not os.path.exists(path):
        return kv
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if ":" in line:
                k, v = line.split(":", 1)
                kv.setdefault(k.strip(), v.strip())
    return kv


def check_pffexport(exp, pst, work):
    target = os.path.join(work, "pff")
    run(["pffexport", "-q", "-t", target, "-m", "all", pst])
    top = os.path.join(target + ".export", "Top of Outlook data file")
    for path, msgs in exp["folders"].items():
        d = os.path.join(top, path)
        got = sorted(x for x in os.listdir(d) if x.startswith("Message")) if os.path.isdir(d) else []
        if len(got) != len(msgs):
            problem("pffexport: folder %r has %d messages, expected %d" % (path, len(got), len(msgs)))
            continue
        for e, name in zip(msgs, got):
            md = os.path.join(d, name)
            where = "pffexport %s %s: " % (path, name)
            oh = read_kv(os.path.join(md, "OutlookHeaders.txt"))
            if pff_subject(oh.get("Subject", "")) != pff_subject(e["subject"]):
                problem(where + "subject %r != %r" % (oh.get("Subject"), e["subject"]))
            if e["sender_name"] and bmp_only(oh.get("Sender name", "")) != bmp_only(e["sender_name"]):
                problem(where + "sender name %r" % oh.get("Sender name"))
            if e["sender_address"] and oh.get("Sender email address", "") != e["sender_address"]:
                problem(where + "sender address %r" % oh.get("Sender email address"))
            if e["sent_s"]:
                t = oh.get("Client submit time", "")
                want = datetime.fromtimestamp(e["sent_s"], timezone.utc).strftime("%b %d, %Y %H:%M:%S")
                if not t.startswith(want):
                    problem(where + "submit time %r != %r" % (t, want))
            if e["headers"]:
                with open(os.path.join(md, "InternetHeaders.txt"), encoding="utf-8", errors="replace") as f:
                    ih = f.read()
                for h in e["headers"]:
                    if h not in ih:
                        problem(where + "transport header %r missing" % h)
            if e["body_plain"]:
                with open(os.path.join(md, "Message.txt"), encoding="utf-8", errors="replace") as f:
                    if bmp_only(norm_body(f.read())) != norm_body(bmp_only(e["body_plain"])):
                        problem(where + "plain body differs")
            elif e["body_html"]:
                with open(os.path.join(md, "Message.html"), encoding="utf-8", errors="replace") as f:
                    if norm_body(f.read()) != norm_body(e["body_html"]):
                        problem(where + "html body differs")
            recips = []
            rp = os.path.join(md, "Recipients.txt")
            if os.path.exists(rp):
                cur = {}
                with open(rp, encoding="utf-8", errors="replace") as f:
                    for line in f.read().split("\n"):
                        if not line.strip():
                            if cur:
                                recips.append(cur)
                            cur = {}
                        elif ":" in line:
                            k, v = line.split(":", 1)
                            cur[k.strip()] = v.strip()
                if cur:
                    recips.append(cur)
            types = {1: "To", 2: "CC", 3: "BCC"}
            want = [[bmp_only(n), a, types[t]] for n, a, t in e["recipients"]]
            have = [[bmp_only(r.get("Display name", "")), r.get("Email address", ""), r.get("Recipient type", "")] for r in recips]
            if want != have:
                problem(where + "recipients %r != %r" % (have[:3], want[:3]))
            ad = os.path.join(md, "Attachments")
            files = sorted(os.listdir(ad), key=lambda x: int(x.split("_", 1)[0])) if os.path.isdir(ad) else []
            atts = []
            for fn in files:
                with open(os.path.join(ad, fn), "rb") as f:
                    data = f.read()
                atts.append([fn.split("_", 1)[1], hashlib.sha256(data).hexdigest(), len(data)])
            want_atts = [[bmp_only(a[0]), a[1], a[2]] for a in e["attachments"]]
            if [[bmp_only(a[0]), a[1], a[2]] for a in atts] != want_atts:
                problem(where + "attachments %r != %r" % (atts[:3], want_atts[:3]))


def main():
    exp_path, pst, work = sys.argv[1:4]
    with open(exp_path, encoding="utf-8") as f:
        exp = json.load(f)
    check_readpst(exp, pst, work)
    check_pffexport(exp, pst, work)
    for p in problems[:50]:
        print(p)
    if len(problems) > 50:
        print("... %d more" % (len(problems) - 50))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
