"""Real open-data files (issue 10): Big5-HKSCS CSVs, JSON with a byte-order mark, HTML entities
and padded cells. Every unreadable file is one clear error naming file and line, never a traceback."""

import json
import subprocess
import sys

import pytest

from hkllm.data.build import _stage_failure, build
from hkllm.data.recipe import RecipeError, load_recipe

FAST = "steps: {minhash: null, quality: {min_chars: 5}, heldout: 0.0}\n"
# HK-only characters (綫, 邨, 嘢 are in Big5-HKSCS, not in plain Big5) among everyday ones
ROWS = [("大圍", "東鐵綫", "大圍是東鐵綫的一個車站，附近有很多屋邨。"),
        ("石硤尾", "觀塘綫", "石硤尾邨是香港第一個公共屋邨，有好多嘢食。")]


def recipe(tmp_path, source: str, workers: int = 1):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: x\nworkers: {workers}\nsources:\n  - {source}\n{FAST}", encoding="utf-8")
    return path


def big5_csv(tmp_path, header="station,line,note"):
    path = tmp_path / "stations.csv"
    path.write_bytes((header + "\r\n" + "".join(f"{a},{b},{c}\r\n" for a, b, c in ROWS)).encode("big5hkscs"))
    return path


def train_texts(out) -> list[str]:
    return [json.loads(line)["text"] for f in sorted((out / "train").glob("*.jsonl")) for line in f.read_text().splitlines()]


TABLE = "{name: mtr, type: table, path: %s, template: '{station}站屬於{line}。{note}'%s}"


def test_big5hkscs_csv_is_read_with_its_encoding(tmp_path):
    big5_csv(tmp_path)
    build(load_recipe(recipe(tmp_path, TABLE % ("stations.csv", ", encoding: big5hkscs"))), tmp_path / "out", progress=False)
    text = "\n".join(train_texts(tmp_path / "out"))
    assert "大圍站屬於東鐵綫" in text and "石硤尾邨" in text and "嘢" in text


def test_big5hkscs_csv_without_encoding_says_which_line_and_what_to_set(tmp_path):
    # A Chinese header is read while the recipe is checked: the error comes before any work.
    big5_csv(tmp_path, header="車站,綫,備註")
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe(tmp_path, "{name: mtr, type: table, path: stations.csv, template: '{車站}'}"))
    message = str(err.value)
    assert "stations.csv:1" in message and "encoding: big5hkscs" in message and "sources[0].encoding" in message


@pytest.mark.parametrize("workers", [1, 2])
def test_big5hkscs_rows_far_into_a_csv_stop_the_build_with_file_and_line(tmp_path, workers):
    # The up-front check decodes only the file's first block; the Big5 rows after 2,000 ASCII
    # ones are found by the reader (in a worker process when workers > 1).
    english = "".join(f"Station {i},Line {i},A station on the line number {i} of the railway.\r\n" for i in range(2000))
    path = tmp_path / "stations.csv"
    path.write_bytes(b"station,line,note\r\n" + english.encode() + "".join(f"{a},{b},{c}\r\n" for a, b, c in ROWS).encode("big5hkscs"))
    r = load_recipe(recipe(tmp_path, TABLE % ("stations.csv", ""), workers=workers))
    with pytest.raises(RecipeError) as err:
        build(r, tmp_path / "out", progress=False)
    message = str(err.value)
    assert "stations.csv:2002" in message and "encoding: big5hkscs" in message
    assert "re-run" not in message


def test_cli_reports_a_wrongly_encoded_csv_without_a_traceback(tmp_path):
    big5_csv(tmp_path)
    path = recipe(tmp_path, TABLE % ("stations.csv", ""))
    out = subprocess.run([sys.executable, "-m", "hkllm", "data", "build", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "encoding: big5hkscs" in out.stderr and "Traceback" not in out.stderr and "re-run" not in out.stderr


def test_unknown_codec_is_a_recipe_error_naming_the_source(tmp_path):
    big5_csv(tmp_path)
    with pytest.raises(RecipeError, match=r"sources\[0\]\.encoding.*'mtr'.*big5-hk"):
        load_recipe(recipe(tmp_path, TABLE % ("stations.csv", ", encoding: big5-hk")))
    with pytest.raises(RecipeError, match=r"sources\[0\]\.encoding.*not a text|unknown text codec 'base64'"):
        load_recipe(recipe(tmp_path, TABLE % ("stations.csv", ", encoding: base64")))


def test_encoding_on_a_source_that_reads_no_text_is_refused(tmp_path):
    with pytest.raises(RecipeError, match=r"sources\[0\]\.encoding.*'pydoc'"):
        load_recipe(recipe(tmp_path, "{name: p, type: pydoc, encoding: big5hkscs}"))


def test_json_table_with_a_byte_order_mark_builds(tmp_path):
    rows = [{"station": a, "line": b, "note": c} for a, b, c in ROWS]
    (tmp_path / "stations.json").write_bytes(json.dumps({"records": rows}, ensure_ascii=False).encode("utf-8-sig"))
    build(load_recipe(recipe(tmp_path, TABLE % ("stations.json", ""))), tmp_path / "out", progress=False)
    assert any("大圍站屬於東鐵綫" in t for t in train_texts(tmp_path / "out"))


def test_cells_are_unescaped_and_stripped(tmp_path):
    # a real MTR cell: the 綫 of 東鐵綫 as an HTML entity, with the padding spreadsheets leave
    (tmp_path / "stations.csv").write_text("station,line,note\n大圍 ,東鐵&#32171;  ,  大圍站位於沙田區，是港鐵的車站。 \n",
                                           encoding="utf-8")
    build(load_recipe(recipe(tmp_path, TABLE % ("stations.csv", ""))), tmp_path / "out", progress=False)
    assert train_texts(tmp_path / "out") == ["大圍站屬於東鐵綫。大圍站位於沙田區，是港鐵的車站。"]


def test_broken_json_table_is_a_counted_malformed_record_with_its_line(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.csv").write_text("station,line,note\n大圍,東鐵綫,大圍站位於沙田區，是港鐵的車站。\n", encoding="utf-8")
    (tmp_path / "t" / "b.json").write_text('[\n {"station": "x",\n  oops}\n]', encoding="utf-8")
    card = build(load_recipe(recipe(tmp_path, TABLE % ("t", ""))), tmp_path / "out", progress=False)
    assert card["malformed_records"] == 1
    assert card["malformed_examples"][0]["where"].endswith("b.json:3")


def test_text_file_in_another_encoding_is_malformed_with_the_codec_to_set(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("大圍站是東鐵綫的一個車站，附近有很多屋邨。", encoding="utf-8")
    (tmp_path / "notes" / "b.txt").write_bytes("石硤尾邨是香港第一個公共屋邨，有好多嘢食。".encode("big5hkscs"))
    card = build(load_recipe(recipe(tmp_path, "{name: notes, type: text, path: notes}")), tmp_path / "out", progress=False)
    assert card["malformed_records"] == 1
    assert "b.txt:1" in card["malformed_examples"][0]["error"]
    assert "encoding: big5hkscs" in card["malformed_examples"][0]["error"]


def test_only_machine_failures_are_worth_a_re_run():
    assert "re-run" in _stage_failure("prepare", OSError("No space left on device"), "log")
    assert "re-run" not in _stage_failure("prepare", ValueError("Unexpected UTF-8 BOM"), "log")


def test_encoding_changes_the_fingerprint_only_when_set(tmp_path):
    # builds made before `encoding:` existed must still resume: the default adds nothing to the hash
    (tmp_path / "stations.csv").write_text("station,line,note\nTai Wai,East Rail,A station.\n", encoding="ascii")
    plain, default, big5 = (load_recipe(recipe(tmp_path, TABLE % ("stations.csv", extra))).fingerprint()
                            for extra in ("", ", encoding: utf-8-sig", ", encoding: big5hkscs"))
    assert plain == default != big5
