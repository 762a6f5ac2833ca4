#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/ (run from anywhere).

Seeds: every line of tests/data/golden/records.jsonl, the record shapes of
tests/formats/wecom_test.cc, the CSVs of the golden data and of the tests, and
hostile inputs (deep nesting, huge numbers, invalid UTF-8, control
characters, BOMs, quote games). Re-running rewrites the seed-* files only;
entries merged in by run_fuzzers.sh (named by their SHA-1) are kept.
"""
import hashlib
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CORPUS = HERE / "corpus"


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode("utf-8")
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def golden_records():
    lines = (ROOT / "tests/data/golden/records.jsonl").read_bytes().split(b"\n")
    return [l for l in lines if l.strip()]


def test_shapes():
    """Record lines of wecom_test.cc: adjacent raw strings joined; payload
    fragments completed with the test's envelope."""
    src = (ROOT / "tests/formats/wecom_test.cc").read_text(encoding="utf-8")
    env = re.search(r'const std::string env = R"\((.*?)\)";', src).group(1)
    out = []
    # A run of R"(...)" literals separated only by white space and '+'
    # joins (the test splits long lines that way).
    for m in re.finditer(r'(?:R"\((?:.*?)\)"\s*(?:\+\s*)?)+', src, re.S):
        parts = re.findall(r'R"\((.*?)\)"', m.group(0), re.S)
        text = "".join(parts)
        before = src[max(0, m.start() - 20):m.start()]
        if '"{" + env +' in before:
            text = "{" + env + text
        if text.startswith("{") and '"msgid"' in text or text.startswith("{" + env):
            out.append(text)
    return out


def hostile_records():
    env = '"msgid":"h","action":"send","from":"a","tolist":["b"],"roomid":"","msgtime":1603875600000,'
    deep = "[" * 2000 + "]" * 2000
    deep_obj = '{"a":' * 500 + "1" + "}" * 500
    return {
        "deep-array": '{' + env + '"msgtype":"text","text":{"content":' + deep + '}}',
        "deep-object": '{' + env + '"msgtype":"mixed","mixed":' + deep_obj + '}',
        "deep-embedded": '{' + env + '"msgtype":"chatrecord","chatrecord":{"item":[{"type":"ChatRecordText","content":"'
        + ('{\\"content\\":' * 60) + '1' + ('}' * 60) + '"}]}}',
        "huge-numbers": '{"msgid":1e400,"action":"send","from":"a","tolist":["b"],"msgtime":99999999999999999999999,'
        '"msgtype":"file","file":{"filesize":-18446744073709551617,"md5sum":12345678901234567890123}}',
        "huge-time-string": '{' + '"msgid":"t","msgtime":"-9223372036854775808","msgtype":"text","text":{"content":"x"}}',
        "float-time": '{"msgid":"f","msgtime":1.6038756e12,"msgtype":"voice","voice":{"play_length":1e308,"size":-0.0}}',
        "invalid-utf8": b'{"msgid":"u\xff","from":"\xc3\x28","tolist":["\xe2\x82"],"msgtype":"text","text":{"content":"\xf0\x90\x80\xed\xa0\x80"}}',
        "control-chars": '{"msgid":"c","from":"a\x01","tolist":["b\x1b[31m"],"msgtype":"text","text":{"content":"line\r\nBcc: x@y\x00z\x7f"}}',
        "bom": "\ufeff{" + env + '"msgtype":"text","text":{"content":"bom"}}',
        "bom-twice": "\ufeff\ufeff{" + env + '"msgtype":"text","text":{"content":"bom"}}',
        "quote-games": '{"msgid":"q\\"\\\\\\"","from":"\\"a\\" <x@y>, z@w","tolist":"\\", b, \\"c","msgtype":"text","text":{"content":"\\u0000\\ud800\\udc00\\ud800"}}',
        "dup-keys": '{"msgid":"d","msgid":"e","msgtype":"text","msgtype":"image","text":{"content":"x"},"image":{}}',
        "null-everything": '{"msgid":"n","action":null,"from":null,"tolist":null,"msgtime":null,"msgtype":null}',
        "wrong-types": '{"msgid":["a"],"action":1,"from":{},"tolist":{"a":1},"msgtime":true,"msgtype":"text","text":"plain"}',
        "msgid-number": '{"msgid":0,"msgtype":"text","text":{"content":""}}',
        "empty-object": "{}",
        "not-object": "[1,2,3]",
        "truncated": '{"msgid":"x","act',
        "recall-self": '{"msgid":"r_1603875600","action":"recall","from":"a","msgtime":1603875600000,"msgtype":"revoke","revoke":{"pre_msgid":"r_1603875600"}}',
        "switch": '{"msgid":"s","action":"switch","time":"x","user":"\\u0000"}',
        "long-names": '{' + env + '"msgtype":"file","file":{"filename":"' + "n" * 1500 + '.' + "e" * 300 + '","sdkfileid":"'
        + "+/" * 200 + '"}}',
        "crlf-multi": ('{' + env + '"msgtype":"text","text":{"content":"one"}}\r\n\r\n  \t\n'
                       '{"msgid":"two","msgtype":"text","text":{"content":"two"}}'),
        "group-no-to": '{"msgid":"g","action":"send","from":"a","tolist":[],"roomid":"wrR\\r\\nX-Evil: 1","msgtime":1603875600000,"msgtype":"text","text":{"content":"x"}}',
        "no-to-1to1": '{"msgid":"o","action":"send","from":"a","tolist":["a"],"msgtime":1603875600000,"msgtype":"text","text":{"content":"x"}}',
        "header-names": '{"msgid":"h2","action":"send","from":"lisi","tolist":["wangwu","eve","long","zhangsan","lisi"],"msgtime":1603875600000,"msgtype":"text","text":{"content":"x"}}',
        "unknown-type": '{' + env + '"msgtype":"\\r\\nSubject: evil","\\r\\nSubject: evil":{"k":"v"}}',
    }


def csv_seeds():
    g = ROOT / "tests/data/golden"
    seeds = {
        "golden-directory": (g / "directory.csv").read_bytes(),
        "golden-mapping": (g / "mapping.csv").read_bytes(),
        "core-test": "\ufeff Mobile , Mailbox \r\n\"+86 138-0013-8000\" , a@x.com\r\n\r\n"
        "  13900139000,\"quoted \"\"name\"\"\"\r\n\"multi\nline\",b@x.com\nlast,row",
        "semicolon": "a;b\n1;2\n",
        "tab": "userid\tname\tmobile\temail\nu1\tAnn\t+1 650 253 0000\tann@x.com\n",
        "unterminated": "a,b\n\"never closed,2\n",
        "dir-synonyms": "User_ID,Display Name,Phone,E-Mail\nu1,Ann,+1 650 253 0000,ann@x.com\n,nobody,,\nu1,dup,,\n",
        "mapper-test": "userid,name,mobile,email\nboth,Both,+86 138 0013 8000,both@corp.com\n"
        "csvonly,CSV only,13900139000,\nemailonly,E-mail only,,emailonly@corp.com\n"
        "unlisted,Unlisted,13700137000,unlisted@corp.com\nnothing,Nothing,,\nbadmail,Bad,,not-an-address\n"
        "\f\ufeffMobile,Mailbox\r\n8613800138000,Both.Mapped@corp.com\r\n\"0086 139 0013 9000\" , csv.only@corp.com\r\n"
        "+86 13700137000,ghost@corp.com\r\n12,x@corp.com\r\n13600136000,not-an-address\r\n"
        "\fPrimarySmtpAddress\nboth.mapped@corp.com\ncsv.only@corp.com\nemailonly@corp.com\n"
        "unlisted@corp.com\nboth@corp.com\n",
        "quote-games": 'userid,name,mobile,email\n"a""b",""","""",x@y.z\n"c" d,e"f,"g\r\n",\n"""",,,\n',
        "bom-only": "\ufeff",
        "bom-twice": "\ufeff\ufeffuserid,email\nu,u@x.com\n",
        "control-chars": "userid,name,mobile,email\nu\x01,n\x00m,\x1b,e@x.com\x7f\n",
        "invalid-utf8": b"userid,name,mobile,email\n\xff\xfe,\xc3\x28,\xe2\x82,a@\xf0\x90.com\n",
        "cr-only": "userid,name\ru1,Ann\ru2,Bob\r",
        "many-columns": ",".join(f"c{i}" for i in range(300)) + "\n" + ",".join("x" for _ in range(300)) + "\n",
        "huge-numbers": "mobile,mailbox\n99999999999999999999999999999,a@b.cc\n+0,b@c.dd\n-1e400,c@d.ee\n+86 ,d@e.ff\n",
        "mailbox-list": "\fmobile,mailbox\n13800138000,A@B.CC\n\fmailbox\nA@B.CC\n# comment\nx@y;z\n\ufeffnot-a-mailbox\n",
        "empty-header": "\n\n,\n,,,\n",
    }
    return seeds


def media_seeds():
    return {
        "golden-style": "sdkfileid,path\nLISTED,sub/b.txt\nEVIL,../../etc/passwd\nABS,/etc/passwd\nLINKDIR,linkdir/passwd\n",
        "fixture-names": "sdkfileid,path\na.bin,a.bin\nx+y/z,x-y_z\nout,out\nabs,abs\nup,up.d/secret\nfifo,fifo\n"
        "dir,dir.d\ninside,inside\nbig,big.bin\nsub,sub/b.txt\n",
        "synonyms": "\ufeffFileID;File\r\nA;a.bin\r\nB;sub//b.txt\r\nC;./a.bin\r\nD;sub/../a.bin\r\n",
        "bad-header": "id,where\nx,a.bin\n",
        "unterminated": 'sdkfileid,path\n"x,a.bin\n',
        "quote-games": 'sdkfileid,path\n"a""b","a.bin"\n"",""\n"x\ny","sub/b.txt"\n,,,\n',
        "control-chars": "sdkfileid,path\nx,a\x01.bin\ny,sub\\b.txt\nz,a.bin\x00\n\x7f,a.bin\n",
        "invalid-utf8": b"sdkfileid,path\n\xff,a.bin\nq,\xc3\x28\n",
        "too-few": "sdkfileid,path\nonly-one\n\n,\n",
        "long-id": "sdkfileid,path\n" + "L" * 300 + ",a.bin\n" + "+" * 256 + "," + "p" * 300 + "\n",
        "md5-upper": "sdkfileid,path\n" + hashlib.md5(b"gamma").hexdigest().upper() + ",a.bin\n",
        "empty": "",
    }


def main():
    records = golden_records()
    shapes = test_shapes()
    for i, line in enumerate(records):
        write("fuzz_record_parser", f"golden-{i:02d}", line)
        write("fuzz_render_roundtrip", f"golden-{i:02d}", line)
    for i, line in enumerate(shapes):
        write("fuzz_record_parser", f"test-{i:02d}", line)
        write("fuzz_render_roundtrip", f"test-{i:02d}", line)
    for name, data in hostile_records().items():
        write("fuzz_record_parser", f"hostile-{name}", data)
        write("fuzz_render_roundtrip", f"hostile-{name}", data)
    for name, data in csv_seeds().items():
        write("fuzz_csv", name, data)
    for name, data in media_seeds().items():
        write("fuzz_media_index", name, data)
    for t in sorted(p.name for p in CORPUS.iterdir()):
        print(t, len(list((CORPUS / t).iterdir())))


if __name__ == "__main__":
    main()
