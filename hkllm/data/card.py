"""The data card: what went in, what each step removed and why, what came out.

datacard.json is for machines (later stages read it); datacard.md is for people.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from hkllm.data.recipe import Recipe
from hkllm.files import read_jsonl

# stage, step name in datatrove stats → name in the card
_STEPS = [
    ("prepare", "normalize", "normalize"),
    ("prepare", "detect variety", "detect_variety"),
    ("prepare", "redact", "redact"),
    ("prepare", "quality", "quality"),
    ("signatures", "exact dedup", "exact_dedup"),
    ("filter", "🎯 MinHash stage 4", "near_dedup"),
    ("filter", "decontaminate", "decontaminate"),
    ("filter", "split", "split"),
    ("mix", "mix", "mix"),
]


def _count(files) -> dict:
    by_variety: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    by_source: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for f in files:
        for _, doc in read_jsonl(f):
            n, meta = len(doc["text"]), doc.get("metadata", {})
            for table, key in ((by_variety, meta.get("variety")), (by_source, meta.get("source"))):
                table[key][0] += 1
                table[key][1] += n
    total_chars = sum(c for _, c in by_variety.values()) or 1

    def rows(table):
        return {k: {"documents": d, "characters": c, "share": round(c / total_chars, 4)}
                for k, (d, c) in sorted(table.items(), key=lambda kv: -kv[1][1])}

    return {
        "documents": sum(d for d, _ in by_variety.values()),
        "characters": sum(c for _, c in by_variety.values()),
        "by_variety": rows(by_variety),
        "by_source": rows(by_source),
    }


def merged_stats(logs: Path) -> list[dict]:
    """Per-step stats of a stage, summed over its tasks (also across resumed runs)."""
    merged: list[dict] = []
    for f in sorted((logs / "stats").glob("*.json")):
        for i, step in enumerate(json.loads(f.read_text(encoding="utf-8"))):
            if i >= len(merged):
                # datatrove names steps "<type>: <name>"; keep the name
                merged.append({"name": step["name"].split(": ", 1)[-1], "stats": Counter(), "seconds": 0.0})
            time_stats = step.get("time_stats")
            merged[i]["seconds"] += time_stats.get("total", 0.0) if isinstance(time_stats, dict) else 0.0
            for key, value in step.get("stats", {}).items():
                total = value.get("total", value.get("n", 0)) if isinstance(value, dict) else value
                if isinstance(total, (int, float)):
                    merged[i]["stats"][key] += total
    return merged


def build_card(recipe: Recipe, out: Path, logs: Path, seconds: float) -> dict:
    # Each stage's stats files are read once; steps are looked up by name.
    merged = {stage: merged_stats(logs / stage) for stage in {s for s, _, _ in _STEPS}}

    def _step_stats(stage_logs: Path, name: str) -> Counter:
        return sum((s["stats"] for s in merged.get(stage_logs.name, []) if s["name"] == name), Counter())

    steps = {}
    for stage, step, key in _STEPS:
        stats = _step_stats(logs / stage, step)
        if stats:
            steps[key] = {k: int(v) for k, v in sorted(stats.items()) if not k.startswith(("doc_len", "chars_"))}
    if "exact_dedup" not in steps:  # exact dedup without MinHash runs in the filter stage
        stats = _step_stats(logs / "filter", "exact dedup")
        if stats:
            steps["exact_dedup"] = {k: int(v) for k, v in stats.items() if not k.startswith("doc_len")}

    sources = []
    for s in recipe.sources:
        stats = _step_stats(logs / "prepare", f"read {s.name} ({s.type})")
        sources.append({"name": s.name, "type": s.type, "license": s.license, "replay": s.replay,
                        "documents_read": int(stats.get("documents", 0)), "malformed": int(stats.get("malformed", 0))})
    malformed = []
    for f in sorted((out / "rejects" / "malformed").glob("*.jsonl")):
        malformed += [record for _, record in read_jsonl(f)]
    licenses: dict[str, list[str]] = defaultdict(list)
    for s in recipe.sources:
        licenses[s.license].append(s.name)
    rates = json.loads((out / "_work" / "mix_rates.json").read_text())
    train = _count(sorted((out / "train").glob("*.jsonl")))
    return {
        "recipe": recipe.name,
        "recipe_file": str(recipe.file),
        "fingerprint": recipe.fingerprint(),
        "seconds": round(seconds, 1),
        "sources": sources,
        "steps": steps,
        "mix": {"by": recipe.mix.by, "target_shares": recipe.mix.shares, "replay": recipe.mix.replay,
                "sampling_rates": {k: round(v, 4) for k, v in rates["rates"].items()},
                "characters_before_mix": rates["chars_before"]},
        "train": train,
        "heldout": _count(sorted((out / "heldout").glob("*.jsonl"))),
        "licenses": dict(licenses),
        "malformed_records": len(malformed),
        "malformed_examples": malformed[:20],
    }


def _table(title: str, rows: dict) -> list[str]:
    lines = [f"| {title} | documents | characters | share |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v['documents']:,} | {v['characters']:,} | {v['share']:.1%} |" for k, v in rows.items()]
    return lines


def render_markdown(card: dict) -> str:
    t, h = card["train"], card["heldout"]
    lines = [
        f"# Data card: {card['recipe']}",
        "",
        f"Built from `{card['recipe_file']}` (fingerprint `{card['fingerprint']}`); last run took {card['seconds']} s.",
        f"Train: **{t['documents']:,} documents, {t['characters']:,} characters**. "
        f"Held-out: {h['documents']:,} documents, {h['characters']:,} characters.",
        "",
        "## Train set by variety", "", *_table("variety", t["by_variety"]), "",
        "## Train set by source", "", *_table("source", t["by_source"]), "",
        "## Held-out set by variety", "", *_table("variety", h["by_variety"]), "",
        "## What each step did", "", "| step | counts |", "|---|---|",
    ]
    for step, stats in card["steps"].items():
        shown = ", ".join(f"{k}: {v:,}" for k, v in stats.items() if k not in ("total", "forwarded"))
        lines.append(f"| {step} | {shown or '—'} |")
    lines += ["", "## Sources and licences", "", "| source | type | licence | replay | documents read | malformed |",
              "|---|---|---|---|---:|---:|"]
    for s in card["sources"]:
        lines.append(f"| {s['name']} | {s['type']} | {s['license']} | {'yes' if s['replay'] else ''} | "
                     f"{s['documents_read']:,} | {s['malformed']:,} |")
    m = card["mix"]
    lines += ["", "## Mix", "", f"Shares by {m['by']}: {m['target_shares'] or 'natural'}; replay {m['replay']:.0%}.",
              f"Sampling rates: {m['sampling_rates']}"]
    if card["malformed_examples"]:
        lines += ["", f"## Malformed records ({card['malformed_records']:,}, first {len(card['malformed_examples'])})", ""]
        lines += [f"- `{e['where']}` ({e['source']}): {e['error']}" for e in card["malformed_examples"]]
    return "\n".join(lines) + "\n"


def write_card(recipe: Recipe, out: Path, logs: Path, seconds: float) -> dict:
    card = build_card(recipe, out, logs, seconds)
    for name, body in (("datacard.json", json.dumps(card, ensure_ascii=False, indent=1)),
                       ("datacard.md", render_markdown(card))):
        tmp = out / (name + ".tmp")
        tmp.write_text(body, encoding="utf-8")
        tmp.replace(out / name)
    return card
