#!/usr/bin/env python3
"""Second, independent reference for the direct serializer: Python's `email`
package (default policy) reads each message in DIR and must find exactly
the composed item described in DIR/composed.json, a list of
  {"file", "subject", "from": {"name", "address"}, "to": [{"name", "address"}],
   "date": epoch seconds, "message_id", "in_reply_to", "references": [...],
   "fields": [[name, value], ...], "plain", "html",
   "attachments": [{"name", "type", "sha256"}]}
("to" empty means the group undisclosed-recipients:;). Bodies are compared
after decoding (CRLF line ends in the message, LF in the expectation).
Prints every difference; exits 1 when there is one.
"""
import hashlib
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import mail_check  # noqa: E402  (tests/mail_check.py)


def diff(errors, what, got, want):
    if got != want:
        g, w = repr(got), repr(want)
        errors.append(f"{what}: got {g[:200]} want {w[:200]}")


def same_mailboxes(got, want):
    """Display names and addresses equal. Python's header parser inserts a
    space between adjacent encoded words in a display name (RFC 2047 section
    6.2 says to drop that white space; GMime does): a name too long for one
    encoded word (over 40 UTF-8 bytes) is compared ignoring spaces here, and
    exactly by the GMime comparison."""
    if len(got) != len(want):
        return False
    for (gn, ga), (wn, wa) in zip(got, want):
        if ga != wa:
            return False
        if gn != wn and not (len(wn.encode()) > 40 and gn.replace(" ", "") == wn.replace(" ", "")):
            return False
    return True


def check(path, exp):
    errors = []
    raw = open(path, "rb").read()
    msg, defects = mail_check.parse(raw)
    errors += defects
    diff(errors, "subject", str(msg["subject"]), exp["subject"])
    got_from = [(a.display_name, a.addr_spec) for a in msg["from"].addresses]
    want_from = [(exp["from"]["name"], exp["from"]["address"])]
    if not same_mailboxes(got_from, want_from):
        diff(errors, "from", got_from, want_from)
    to = msg["to"]
    if exp["to"]:
        got_to = [(a.display_name, a.addr_spec) for a in to.addresses]
        want_to = [(t["name"], t["address"]) for t in exp["to"]]
        if not same_mailboxes(got_to, want_to):
            diff(errors, "to", got_to, want_to)
    else:
        diff(errors, "to groups", [(g.display_name, len(g.addresses)) for g in to.groups],
             [("undisclosed-recipients", 0)])
    diff(errors, "date", int(msg["date"].datetime.timestamp()), exp["date"])
    diff(errors, "message-id", str(msg["message-id"]).strip(), "<" + exp["message_id"] + ">")
    irt = msg["in-reply-to"]
    diff(errors, "in-reply-to", str(irt).strip() if irt is not None else "",
         "<" + exp["in_reply_to"] + ">" if exp["in_reply_to"] else "")
    refs = msg["references"]
    diff(errors, "references", str(refs).split() if refs is not None else [],
         ["<" + r + ">" for r in exp["references"]])
    got_fields = [(k, str(v)) for k, v in msg.items() if k.lower().startswith("x-")]
    diff(errors, "x-fields", got_fields, [tuple(f) for f in exp["fields"]])
    for kind in ("plain", "html"):
        body = msg.get_body(preferencelist=(kind,))
        if body is None:
            errors.append(f"no text/{kind} body")
            continue
        text = body.get_payload(decode=True).decode(body.get_content_charset() or "ascii")
        diff(errors, f"text/{kind}", text, exp[kind].replace("\n", "\r\n"))
    got = []
    for att in msg.iter_attachments():
        data = att.get_payload(decode=True) or b""
        got.append({"name": att.get_filename(), "type": att.get_content_type(),
                    "sha256": hashlib.sha256(data).hexdigest()})
    diff(errors, "attachments", got, exp["attachments"])
    return errors


if __name__ == "__main__":
    sys.exit(mail_check.check_dir(sys.argv[1], "composed.json", check))
