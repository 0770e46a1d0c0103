import json
import subprocess
import sys


def run(args, data: bytes):
    return subprocess.run([sys.executable, "-m", "hkllm", "text", *args], input=data, capture_output=True, check=True)


def test_convert_one_line_out_per_line_in():
    out = run(["convert", "--to", "hk"], "软件\n\n网络\r\n".encode()).stdout.decode()
    assert out == "軟件\n\n網絡\n"


def test_detect_prints_json_lines():
    out = run(["detect"], "個 meeting 改咗去三點\nHello there, how are you?\n".encode()).stdout.decode()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [d["variety"] for d in lines] == ["yue", "en"]
    assert all(isinstance(d["scores"], dict) for d in lines)


def test_redact():
    out = run(["redact"], "電話 9123 4567\n".encode()).stdout.decode()
    assert out == "電話 [PHONE]\n"


def test_invalid_utf8_is_reported_and_answered():
    result = run(["redact"], b"ok 9123 4567\nbad \xff\xfe line\nlast\n")
    lines = result.stdout.decode().splitlines()
    assert lines == ["ok [PHONE]", "bad \ufffd\ufffd line", "last"]
    assert b"stdin:2: invalid UTF-8" in result.stderr
