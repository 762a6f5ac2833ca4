#!/usr/bin/env python3
"""Python's `email` building the messages the renderer builds (bench/e2e/core_bench.sh).

Reads every record of a generated corpus and its media into memory first
(not timed; like wxa_render_loop), then times building one EmailMessage per
item with the same shape as ours (Date, From, To, Subject, Message-ID,
References, the X-WeChat-* headers; multipart/alternative with a text/plain
and a text/html part; multipart/mixed with the media as base64 attachments)
and writing it with CRLF line ends (policy SMTP). Switch and revoke records
render too (as short text items), like ours.

Usage: py_email.py CORPUS_DIR [ROUNDS=1] [MAX_ITEMS=0 (all)]
MAX_ITEMS keeps the first records only (Python's email takes milliseconds
per message: a sample of a big corpus gives the same items/s).
Prints one JSON object: items, cpu_s, wall_s, out_bytes, media_bytes and the
same for the text items only.
"""
import csv
import glob
import hashlib
import html
import json
import os
import sys
import time
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr
from datetime import datetime, timezone

MEDIA_KEYS = ("image", "voice", "video", "file", "emotion")
MAX_MEDIA = 10 << 20


def load(corpus, max_items):
    people = {}
    with open(os.path.join(corpus, "directory.csv"), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            people[row["userid"]] = (row["name"], row["email"] or f"{row['userid']}@corp.example.com")
    media_dir = os.path.join(corpus, "media")
    names = {}
    if os.path.isdir(media_dir):
        for n in os.listdir(media_dir):
            names.setdefault(n.split(".")[0], n)
    items = []
    for path in sorted(glob.glob(os.path.join(corpus, "*.jsonl"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if "msgid" not in r:
                    continue
                media = []
                for k in MEDIA_KEYS:
                    m = r.get(k)
                    if isinstance(m, dict) and m.get("md5sum") in names:
                        p = os.path.join(media_dir, names[m["md5sum"]])
                        if os.path.getsize(p) <= MAX_MEDIA:
                            with open(p, "rb") as mf:
                                media.append((m.get("filename") or names[m["md5sum"]], mf.read()))
                items.append((r, media))
                if max_items and len(items) >= max_items:
                    return people, items
    return people, items


def who(people, uid):
    name, mail = people.get(uid, (uid, f"{uid}@corp.example.com"))
    return formataddr((name, mail))


def build(people, r, media):
    msgtype = r.get("msgtype", "")
    text = r.get("text", {}).get("content", "") if isinstance(r.get("text"), dict) else ""
    if not text:
        text = json.dumps(r.get(msgtype, ""), ensure_ascii=False)
    sender = r.get("from", "")
    to = r.get("tolist", []) or [sender]
    when = datetime.fromtimestamp(r.get("msgtime", 0) / 1000, tz=timezone.utc)
    key = hashlib.md5(r["msgid"].encode()).hexdigest()
    m = EmailMessage(policy=SMTP)
    m["Date"] = format_datetime(when)
    m["From"] = who(people, sender)
    m["Subject"] = f"WeChat: {people.get(sender, (sender,))[0]} -> {people.get(to[0], (to[0],))[0]}"
    m["To"] = ", ".join(who(people, t) for t in to)
    m["Message-ID"] = f"<{key}@wxarchiver>"
    m["References"] = f"<conv-{hashlib.md5((r.get('roomid') or sender).encode()).hexdigest()}@wxarchiver>"
    m["X-WeChat-MsgId"] = r["msgid"]
    m["X-WeChat-MsgType"] = msgtype
    m["X-WeChat-Action"] = r.get("action", "")
    m["X-WeChat-From"] = sender
    m["X-WeChat-To"] = ", ".join(to)
    m["X-Archive-Item"] = key
    head = f"{people.get(sender, (sender,))[0]} -> {people.get(to[0], (to[0],))[0]}"
    stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    plain = f"{head}\r\n{stamp}\r\n\r\n{text}\r\n\r\n-- \r\nWeChat/WeCom {msgtype} message, id {r['msgid']}\r\n"
    rich = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n'
            f"<p><b>{html.escape(head)}</b><br>\n<small>{stamp}</small></p>\n"
            f"<p>{html.escape(text).replace(chr(10), '<br>' + chr(10))}</p>\n<hr>\n"
            f"<p><small>WeChat/WeCom {msgtype} message, id {html.escape(r['msgid'])}</small></p>\n</body></html>\n")
    m.set_content(plain, charset="utf-8", cte="base64")
    m.add_alternative(rich, subtype="html", charset="utf-8", cte="quoted-printable")
    for name, data in media:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes()


def timed(people, items):
    out = 0
    w0, c0 = time.monotonic(), time.process_time()
    for r, media in items:
        out += len(build(people, r, media))
    return {"items": len(items), "cpu_s": round(time.process_time() - c0, 4),
            "wall_s": round(time.monotonic() - w0, 4), "out_bytes": out,
            "media_bytes": sum(len(d) for _, media in items for _, d in media)}


def main():
    corpus = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    max_items = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    people, items = load(corpus, max_items)
    text = [(r, m) for r, m in items if r.get("msgtype") == "text" and not m]
    best_all = min((timed(people, items) for _ in range(rounds)), key=lambda x: x["cpu_s"])
    best_text = min((timed(people, text) for _ in range(rounds)), key=lambda x: x["cpu_s"])
    print(json.dumps({"python_all": best_all, "python_text": best_text}))


if __name__ == "__main__":
    main()
