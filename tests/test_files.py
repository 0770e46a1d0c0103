"""hkllm.files: the one JSON Lines reader and the one stable hash."""

import pytest

from hkllm.errors import UserError
from hkllm.files import JsonlError, read_jsonl, stable_hash, write_atomic


def test_stable_hash_never_changes():
    # Data-build splits, fingerprints and sample order are drawn from these numbers: a new value
    # here would move documents of every existing build between train and held-out.
    assert stable_hash("") == 13020603013274838756
    assert stable_hash("split:docs/docs.jsonl:1") == 7850101655271682390
    assert stable_hash("香港") == 3970684973766723931


def test_records_with_their_line_numbers_blank_lines_skipped(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes('\ufeff{"a": 1}\n\n  \n[2]\r\n"三"\n'.encode("utf-8"))
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, [2]), (5, "三")]


def test_a_bad_line_is_a_user_error_naming_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{path}:3: not valid JSON \(Expecting value, column 7\)$"):
        list(read_jsonl(path))
    with pytest.raises(JsonlError, match=r"^shown/a.jsonl:3: "):
        list(read_jsonl(path, name="shown/a.jsonl"))


def test_on_error_collects_bad_lines_and_reading_goes_on(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n\xff\xfe{}\n{"a": 2}\n')
    bad: list[JsonlError] = []
    assert [r for _, r in read_jsonl(path, on_error=bad.append)] == [{"a": 1}, {"a": 2}]
    assert [(e.lineno, e.reason.split(" (")[0]) for e in bad] == [(2, "not valid JSON"), (3, "not valid utf-8-sig")]
    assert isinstance(bad[1].cause, UnicodeDecodeError) and str(bad[0]).startswith(f"{path}:2: ")


def test_other_codecs(tmp_path):
    big5 = tmp_path / "big5.jsonl"
    big5.write_bytes('{"t": "大圍站"}\n'.encode("big5hkscs") + '{"t": "綫"}\n'.encode("utf-8"))
    bad = []
    assert list(read_jsonl(big5, encoding="big5hkscs", on_error=bad.append)) == [(1, {"t": "大圍站"})]
    assert [e.lineno for e in bad] == [2]
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_text('{"t": "一"}\n\n{"t": "二"}\n', encoding="utf-16")
    assert list(read_jsonl(utf16, encoding="utf-16")) == [(1, {"t": "一"}), (3, {"t": "二"})]


def test_write_atomic_leaves_no_temporary_file(tmp_path):
    write_atomic(tmp_path / "x.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
