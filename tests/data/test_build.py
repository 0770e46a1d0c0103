import json
import shutil
from pathlib import Path

import pytest

from hkllm.data.build import build
from hkllm.data.recipe import load_recipe
from hkllm.errors import UserError

from .conftest import CANTONESE, CONTAMINATED, LONG_YUE


def read_docs(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("*.jsonl")) for line in f.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def built(recipe_file, tmp_path):
    out = tmp_path / "out"
    card = build(load_recipe(recipe_file), out, progress=False)
    return out, card


def test_every_source_is_read_and_cleaned(built):
    out, card = built
    docs = read_docs(out / "train") + read_docs(out / "heldout")
    by_source = {}
    for d in docs:
        by_source.setdefault(d["metadata"]["source"], []).append(d)
    assert set(by_source) == {"docs", "districts", "notices", "pledge", "guides", "replay"}
    html = by_source["notices"][0]["text"]
    assert "颱風" in html and "NAVLINK" not in html and "FOOTERTEXT" not in html  # boilerplate stripped
    assert "三個工作天" in by_source["pledge"][0]["text"]                          # PDF text extracted
    assert len(by_source["guides"]) == 2                                         # one doc per paragraph
    assert any("觀塘區位於九龍" in d["text"] for d in by_source["districts"])      # table template
    for d in docs:
        assert {"source", "variety", "license"} <= set(d["metadata"])
    assert all(d["metadata"]["license"] == "PSF-2.0" for d in by_source["replay"])


def test_steps_drop_what_they_should_and_say_why(built):
    out, card = built
    texts = [d["text"] for d in read_docs(out / "train")]
    assert sum(t.startswith(CANTONESE) for t in texts) == 1           # exact duplicate removed
    assert sum(t.startswith(LONG_YUE[:40]) for t in texts) == 1       # near duplicate removed
    assert not any(CONTAMINATED[:20] in t for t in texts)             # overlaps the eval set
    assert not any("9123 4567" in t for t in texts)                   # phone redacted
    assert any("[PHONE]" in t for t in texts)
    steps = card["steps"]
    assert steps["exact_dedup"]["dropped"] == 1
    assert steps["near_dedup"]["dropped"] == 1
    assert steps["decontaminate"]["dropped_eval_overlap"] == 1
    assert steps["quality"]["dropped_too_short"] == 1
    assert steps["redact"]["redacted_phone"] == 2
    # rejects are kept for audit
    assert CONTAMINATED[:20] in read_docs(out / "rejects" / "decontaminate")[0]["text"]
    assert len(read_docs(out / "rejects" / "near_dedup")) == 1


def test_malformed_records_are_reported_with_file_and_line(built):
    out, card = built
    assert card["malformed_records"] == 2
    where = sorted(e["where"] for e in card["malformed_examples"])
    assert where == ["docs.jsonl:4", "docs.jsonl:5"]
    assert "docs.jsonl:4" in (out / "datacard.md").read_text(encoding="utf-8")
    assert next(s for s in card["sources"] if s["name"] == "docs")["malformed"] == 2


def test_varieties_and_replay_share(built):
    out, card = built
    varieties = {d["metadata"]["variety"] for d in read_docs(out / "train")}
    assert {"yue", "zh-hant", "en"} <= varieties
    replay_chars = sum(len(d["text"]) for d in read_docs(out / "train") if d["metadata"]["source"] == "replay")
    share = replay_chars / card["train"]["characters"]
    assert 0.15 <= share <= 0.35, share  # target 25%, whole documents


def test_data_card_files(built):
    out, card = built
    on_disk = json.loads((out / "datacard.json").read_text(encoding="utf-8"))
    assert on_disk["train"] == card["train"]
    md = (out / "datacard.md").read_text(encoding="utf-8")
    for heading in ("Train set by variety", "Train set by source", "What each step did", "Sources and licences"):
        assert heading in md
    assert "PSF-2.0" in md and "CC-BY-4.0" in md


def test_rerun_is_idempotent_and_resumes_after_a_crash(recipe_file, tmp_path):
    out = tmp_path / "out"
    recipe = load_recipe(recipe_file)
    build(recipe, out, progress=False)
    first = {p: p.read_bytes() for p in sorted((out / "train").glob("*.jsonl"))}
    assert first

    # Re-run: every task is already complete, outputs are untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in first}
    build(recipe, out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in first} == mtimes

    # Crash in the middle: the last two stages never finished and their output was half-written.
    for stage in ("filter", "mix"):
        shutil.rmtree(out / "_work" / "logs" / stage / "completions")
    for p in first:
        p.write_text('{"text": "half-writ', encoding="utf-8")
    build(recipe, out, progress=False)
    assert {p: p.read_bytes() for p in sorted((out / "train").glob("*.jsonl"))} == first


def test_a_different_recipe_in_the_same_folder_is_refused(recipe_file, tmp_path):
    out = tmp_path / "out"
    build(load_recipe(recipe_file), out, progress=False)
    recipe_file.write_text(recipe_file.read_text().replace("heldout: 0.0", "heldout: 0.5"))
    with pytest.raises(UserError, match="different recipe"):
        build(load_recipe(recipe_file), out, progress=False)
    card = build(load_recipe(recipe_file), out, force=True, progress=False)
    assert card["heldout"]["documents"] > 0


def test_parallel_workers_give_the_same_corpus(recipe_file, tmp_path):
    recipe = load_recipe(recipe_file)
    one = build(recipe, tmp_path / "one", progress=False)
    recipe.workers = 2
    two = build(recipe, tmp_path / "two", progress=False)
    assert one["train"]["by_variety"] == two["train"]["by_variety"]
    texts = lambda d: sorted(x["text"] for x in read_docs(d / "train"))  # noqa: E731
    assert texts(tmp_path / "one") == texts(tmp_path / "two")


def test_document_ids_do_not_depend_on_the_working_directory(recipe_file, tmp_path, monkeypatch):
    import os

    inside = build(load_recipe(recipe_file), tmp_path / "a", progress=False)
    monkeypatch.chdir(recipe_file.parent.parent)
    relative = os.path.relpath(recipe_file, os.getcwd())
    outside = build(load_recipe(relative), tmp_path / "b", progress=False)
    ids = lambda d: sorted(x["id"] for x in read_docs(d / "train"))  # noqa: E731
    assert ids(tmp_path / "a") == ids(tmp_path / "b")
    assert all(not i.split("/", 1)[1].startswith("/") for i in ids(tmp_path / "a"))
    assert inside["train"] == outside["train"]
