import subprocess
import sys

import pytest

from hkllm.data.build import build
from hkllm.data.recipe import RecipeError, load_recipe


def write(tmp_path, body: str):
    path = tmp_path / "r.yaml"
    path.write_text(body, encoding="utf-8")
    return path


@pytest.mark.parametrize("body,field", [
    ("name: x\nsources: []\n", "sources"),
    ("name: x\nsources:\n  - {name: a, type: jsonl, pth: a.jsonl}\n", "sources[0].pth"),
    ("name: x\nsources:\n  - {name: a, type: csv, path: a.jsonl}\n", "sources[0].type"),
    ("name: x\nsources:\n  - {name: a, type: jsonl}\n", "sources[0].path"),
    ("name: x\nsources:\n  - {name: a, type: jsonl, path: missing.jsonl}\n", "sources[0].path"),
    ("name: x\nsources:\n  - {name: a, type: table, path: t.csv}\n", "sources[0].template"),
    ("name: x\nsources:\n  - {name: a, type: pydoc}\nsteps: {heldout: 2}\n", "steps.heldout"),
    ("name: x\nsources:\n  - {name: a, type: pydoc}\nsteps: {quality: {min_chars: many}}\n", "steps.quality.min_chars"),
    ("name: x\nsources:\n  - {name: a, type: pydoc}\nmix: {replay: 0.3}\n", "mix.replay"),
    ("name: x\nsources:\n  - {name: a, type: pydoc}\nmix: {by: source, shares: {b: 1}}\n", "mix.shares.b"),
    ("sources:\n  - {name: a, type: pydoc}\n", "name"),
])
def test_recipe_errors_name_the_field(tmp_path, body, field):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(write(tmp_path, body))
    assert f"field '{field}'" in str(err.value)


def test_template_column_missing_from_table_names_the_field(tmp_path):
    (tmp_path / "t.csv").write_text("name,district\nA,B\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"sources\[0\]\.template.*region"):
        load_recipe(write(tmp_path, "name: x\nsources:\n  - {name: t, type: table, path: t.csv, template: '{name} {region}'}\n"))


def test_error_raised_inside_a_worker_process_reaches_the_user(tmp_path):
    # The column exists in the first file (checked up front) but not in a JSON table read later.
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.csv").write_text("name,region\nA,B\n", encoding="utf-8")
    (tmp_path / "t" / "b.jsonl").write_text('{"name": "C"}\n', encoding="utf-8")
    recipe = load_recipe(write(tmp_path, "name: x\nworkers: 2\nsources:\n  - {name: t, type: table, path: t, "
                                         "template: '{name} is in {region}, a district of Hong Kong.'}\n"
                                         "steps: {minhash: null, quality: {min_chars: 5}}\n"))
    card = build(recipe, tmp_path / "out", progress=False)
    assert card["malformed_records"] == 1 and "region" in card["malformed_examples"][0]["error"]


def test_cli_reports_recipe_errors_without_a_traceback(tmp_path):
    path = write(tmp_path, "name: x\nsources:\n  - {name: a, type: jsonl, pth: a.jsonl}\n")
    out = subprocess.run([sys.executable, "-m", "hkllm", "data", "build", str(path), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "field 'sources[0].pth'" in out.stderr and "Traceback" not in out.stderr
