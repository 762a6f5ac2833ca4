#!/usr/bin/env python3
"""Independent check of rendered items with Python's standard `email`
package (default policy). Reads DIR/expect.json, a list of
  {"file", "subject", "from", "to": [...], "date": epoch seconds,
   "text": snippet, "attachments": [{"name", "sha256"}]}
and checks that each file parses with no defects and that the round trip
keeps subject, addresses, date, text and attachment bytes.
Exit 0 when all pass; otherwise prints every failure and exits 1.
"""
import hashlib
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mail_check  # noqa: E402  (tests/mail_check.py)


def check(path, exp):
    errors = []
    raw = open(path, "rb").read()
    if b"\n" in raw.replace(b"\r\n", b""):
        errors.append("bare LF line ending")
    for line in raw.split(b"\r\n"):
        if len(line) > 998:
            errors.append("line longer than 998 octets")
            break
    msg, defects = mail_check.parse(raw)
    errors += defects
    # Header values must decode without defects too.
    for name, value in msg.items():
        if getattr(value, "defects", None):
            errors.append(f"header {name} defects: {value.defects}")
    if str(msg["subject"]) != exp["subject"]:
        errors.append(f"subject {str(msg['subject'])!r} != {exp['subject']!r}")
    frm = [a.addr_spec for a in msg["from"].addresses]
    if frm != [exp["from"]]:
        errors.append(f"from {frm} != {exp['from']}")
    to = [a.addr_spec for a in msg["to"].addresses] if msg["to"] else []
    if to != exp["to"]:
        errors.append(f"to {to} != {exp['to']}")
    if int(msg["date"].datetime.timestamp()) != exp["date"]:
        errors.append(f"date {msg['date']} != {exp['date']}")
    if not msg["message-id"]:
        errors.append("no Message-ID")
    body = msg.get_body(preferencelist=("plain",))
    if body is None:
        errors.append("no text/plain body")
    elif exp["text"] and exp["text"] not in body.get_content():
        errors.append(f"text {exp['text']!r} not in the plain body")
    html = msg.get_body(preferencelist=("html",))
    if html is None:
        errors.append("no text/html body")
    got = []
    for att in msg.iter_attachments():
        data = att.get_content()
        if isinstance(data, str):
            data = data.encode("utf-8")
        got.append({"name": att.get_filename(), "sha256": hashlib.sha256(data).hexdigest()})
    if got != exp["attachments"]:
        errors.append(f"attachments {got} != {exp['attachments']}")
    return errors


if __name__ == "__main__":
    sys.exit(mail_check.check_dir(sys.argv[1], "expect.json", check))
