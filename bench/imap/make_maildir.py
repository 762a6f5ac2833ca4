#!/usr/bin/env python3
"""Writes a synthetic Maildir tree in the engine's layout, for upload benches:
ROOT/<mailbox>/.WeChat Archiver/cur/<secs>.<32 hex>.wxa:2,S, CRLF lines,
mtime = the message date (Dovecot's INTERNALDATE). Deterministic.

  make_maildir.py ROOT --messages 20000 --size 4096 --mailboxes 8
"""
import argparse
import email.utils
import hashlib
import os

ap = argparse.ArgumentParser()
ap.add_argument("root")
ap.add_argument("--messages", type=int, default=20000)
ap.add_argument("--size", type=int, default=4096, help="bytes per message (approximate to +-1 line)")
ap.add_argument("--mailboxes", type=int, default=8)
ap.add_argument("--folder", default="WeChat Archiver")
a = ap.parse_args()

start = 1700000000
for i in range(a.messages):
    box = "user%03d@corp.example.com" % (i % a.mailboxes)
    cur = os.path.join(a.root, box, "." + a.folder.replace("/", "."), "cur")
    if i < a.mailboxes:
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(os.path.dirname(cur), sub), exist_ok=True)
        open(os.path.join(os.path.dirname(cur), "maildirfolder"), "w").close()
    t = start + i * 7
    key = hashlib.sha256(b"%d" % i).hexdigest()[:32]
    head = ("Message-ID: <%s@wxa.bench>\r\nDate: %s\r\nFrom: a@corp.example.com\r\n"
            "To: %s\r\nSubject: bench %d\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n") % (
                key, email.utils.formatdate(t), box, i)
    line = ("%s line of message %d " % (key, i) * 3)[:76] + "\r\n"
    body = line * max(1, (a.size - len(head)) // len(line))
    name = os.path.join(cur, "%d.%s.wxa:2,S" % (t, key))
    with open(name, "wb") as f:
        f.write((head + body).encode())
    os.utime(name, (t, t))
print("wrote %d messages into %d mailboxes under %s" % (a.messages, min(a.mailboxes, a.messages), a.root))
