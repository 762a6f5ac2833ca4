#!/usr/bin/env python3
"""Checks a pst:DIR tree against a maildir:DIR reference of the same corpus,
with the independent readers only (readpst from libpst, pffexport from libpff).

Usage: check_sink.py REF_MAILDIR PST_DIR WORKDIR [FOLDER]

- every finished volume (DIR/<mailbox>/*.pst) is read by readpst and by
  pffexport: exit status 0 and nothing on stderr;
- no *.pst.partial is left anywhere;
- per mailbox, the messages readpst extracts from all volumes together are
  the reference's messages exactly once each (by Message-ID), with the same
  subject, sender address and attachment bytes (name + SHA-256, as a multiset:
  readpst writes attachments in reverse order);
- pffexport finds the same number of messages per mailbox;
- DIR/mapping.csv lists exactly the finished volumes.
Prints the differences and exits 1, or prints a summary and exits 0.
"""
import collections
import csv
import email
import email.header
import email.parser
import email.policy
import email.utils
import hashlib
import os
import re
import subprocess
import sys

problems = []


def problem(msg):
    if len(problems) < 200:
        problems.append(msg)


def run(cmd):
    p = subprocess.run(cmd, capture_output=True)
    if p.returncode != 0:
        problem("%s exited %d: %s" % (" ".join(cmd), p.returncode, p.stderr.decode(errors="replace")[:500]))
    elif p.stderr.strip():
        problem("%s wrote to stderr: %s" % (" ".join(cmd), p.stderr.decode(errors="replace")[:500]))


def utf8(s):
    # 8-bit header bytes come back surrogate-escaped from the compat32 parser.
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        return s


def text_header(v):
    if v is None:
        return ""
    v = re.sub(r"\r?\n(?=[ \t])", "", utf8(str(v)))  # unfold
    return str(email.header.make_header(email.header.decode_header(v)))


def filename_of(part):
    # Only these two headers go through the (slow) default policy, which
    # knows RFC 2231, RFC 2047 and raw UTF-8 parameters.
    head = ""
    for h in ("Content-Type", "Content-Disposition"):
        v = part.get(h)
        if v is not None:
            head += "%s: %s\n" % (h, utf8(str(v)))
    if not head:
        return None
    return email.parser.Parser(policy=email.policy.default).parsestr(head + "\n", headersonly=True).get_filename()


def summarize(raw):
    # compat32 parsing (the default policy's header objects are ~10x slower).
    m = email.message_from_bytes(raw)
    mid = (m.get("Message-ID") or "").strip()
    subject = text_header(m.get("Subject"))
    sender = email.utils.parseaddr(str(m.get("From") or ""))[1].lower()
    atts = []
    for part in m.walk():
        if part.is_multipart():
            continue
        name = filename_of(part)
        if part.get_content_disposition() == "attachment" or (
                name and part.get_content_type() not in ("text/plain", "text/html")):
            data = part.get_payload(decode=True) or b""
            atts.append((name or "", hashlib.sha256(data).hexdigest(), len(data)))
    return mid, subject, sender, sorted(atts)


def main():
    ref, pst_dir, work = sys.argv[1], sys.argv[2], sys.argv[3]
    folder = sys.argv[4] if len(sys.argv) > 4 else "WeChat Archiver"
    os.makedirs(work, exist_ok=True)
    # The reference.
    want = {}
    for mb in sorted(os.listdir(ref)):
        cur = os.path.join(ref, mb, "." + folder.replace("/", "."), "cur")
        if not os.path.isdir(cur):
            continue
        msgs = {}
        for f in os.listdir(cur):
            with open(os.path.join(cur, f), "rb") as fh:
                s = summarize(fh.read())
            msgs[s[0]] = s
        want[mb] = msgs
    # The volumes.
    volumes = []
    got = {}
    pff_counts = collections.Counter()
    for mb in sorted(os.listdir(pst_dir)):
        d = os.path.join(pst_dir, mb)
        if not os.path.isdir(d) or not os.path.exists(os.path.join(d, ".mailbox")):
            continue
        for f in sorted(os.listdir(d)):
            if f.endswith(".partial"):
                problem("left over: %s/%s" % (mb, f))
            if not f.endswith(".pst"):
                continue
            volumes.append((mb, f))
            path = os.path.join(d, f)
            out = os.path.join(work, "readpst", mb, f)
            os.makedirs(out, exist_ok=True)
            run(["readpst", "-q", "-e", "-j", "0", "-D", "-o", out, path])
            for root, _, files in os.walk(out):
                for name in files:
                    if not name.endswith(".eml"):
                        continue
                    with open(os.path.join(root, name), "rb") as fh:
                        s = summarize(fh.read())
                    got.setdefault(mb, []).append((f, s))
            pout = os.path.join(work, "pff", mb, f)
            os.makedirs(os.path.dirname(pout), exist_ok=True)
            run(["pffexport", "-q", "-t", pout, path])
            for root, dirs, _ in os.walk(pout + ".export"):
                for dn in dirs:
                    if dn.startswith("Message"):
                        pff_counts[mb] += 1
    total = 0
    attachments = 0
    for mb in sorted(set(want) | set(got)):
        w = want.get(mb, {})
        seen = collections.Counter()
        for vol, s in got.get(mb, []):
            seen[s[0]] += 1
            total += 1
            attachments += len(s[3])
            if s[0] not in w:
                problem("%s: %s in %s is not in the reference" % (mb, s[0], vol))
                continue
            ws = w[s[0]]
            if s[1] != ws[1]:
                problem("%s %s: subject %r, want %r" % (mb, s[0], s[1], ws[1]))
            if s[2] != ws[2]:
                problem("%s %s: sender %r, want %r" % (mb, s[0], s[2], ws[2]))
            if [a[1:] for a in s[3]] != [a[1:] for a in ws[3]] or sorted(a[0] for a in s[3]) != sorted(a[0] for a in ws[3]):
                problem("%s %s: attachments %r, want %r" % (mb, s[0], s[3], ws[3]))
        for mid, n in seen.items():
            if n > 1:
                problem("%s: %s %d times" % (mb, mid, n))
        for mid in w:
            if mid not in seen:
                problem("%s: %s missing" % (mb, mid))
        if pff_counts[mb] != len(got.get(mb, [])):
            problem("%s: pffexport found %d messages, readpst %d" % (mb, pff_counts[mb], len(got.get(mb, []))))
    # mapping.csv
    mapping = os.path.join(pst_dir, "mapping.csv")
    if not os.path.exists(mapping):
        problem("no mapping.csv")
    else:
        with open(mapping, newline="") as fh:
            rows = list(csv.reader(fh))
        header = ["Workload", "FilePath", "Name", "Mailbox", "IsArchive", "TargetRootFolder", "ContentCodePage",
                  "SPFileContainer", "SPManifestContainer", "SPSiteUrl"]
        if not rows or rows[0] != header:
            problem("mapping.csv header %r" % (rows[:1],))
        listed = []
        for r in rows[1:]:
            if len(r) != 10 or r[0] != "Exchange" or r[4] != "FALSE" or r[5] != "/" or any(r[6:]):
                problem("mapping.csv row %r" % (r,))
                continue
            with open(os.path.join(pst_dir, r[1], ".mailbox")) as fh:
                if fh.read().strip() != r[3]:
                    problem("mapping.csv row %r: mailbox differs from %s/.mailbox" % (r, r[1]))
            listed.append((r[1], r[2]))
        if sorted(listed) != sorted(volumes):
            problem("mapping.csv lists %r, the tree holds %r" % (sorted(listed), sorted(volumes)))
    if problems:
        print("\n".join(problems))
        return 1
    print("ok: %d volumes, %d messages, %d attachments, %d mailboxes" % (len(volumes), total, attachments, len(got)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
