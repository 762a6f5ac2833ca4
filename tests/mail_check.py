"""What tests/tools/check_eml.py and tests/mime/check_composed.py share: each
reads a directory of rendered messages and a JSON list of expectations (one
object per message, naming its "file"), parses each message with Python's
standard `email` package (default policy), and prints every failure.

The scripts import it by path (they add tests/ to sys.path) and write no
bytecode, so running them leaves nothing in the source tree.
"""
import email
import email.policy
import json
import os


def parse(raw):
    """The message in raw (bytes) and one error per MIME part with defects."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    errors = []
    for part in msg.walk():
        if part.defects:
            errors.append(f"defects in {part.get_content_type()}: {part.defects}")
    return msg, errors


def check_dir(d, expect_name, check):
    """Runs check(path, expectation) -> [error, ...] for each expectation in
    d/expect_name; prints the errors and a summary line. Returns the exit
    status: 1 when a message failed or there was none, else 0."""
    expect = json.load(open(os.path.join(d, expect_name), encoding="utf-8"))
    failures = 0
    for exp in expect:
        errs = check(os.path.join(d, exp["file"]), exp)
        for e in errs:
            print(f"{exp['file']}: {e}")
        failures += bool(errs)
    print(f"checked {len(expect)} messages, {failures} failed")
    return 1 if failures or not expect else 0
