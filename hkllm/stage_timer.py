"""Time per pipeline stage, kept across re-runs (used by `hkllm quickstart` and `hkllm realmodel`).

    timer = Timer(out)                                   # reads OUT/timings.json if a run left one
    metrics = timer.run("cpt", lambda: (run_cpt(), done_before))
    print(timer.table())
"""

from __future__ import annotations

import json
import time
from pathlib import Path


class Timer:
    """Minutes per stage, kept in OUT/timings.json so that a re-run that skips a finished stage
    still reports the time it took when it ran."""

    def __init__(self, out: Path):
        self.path = out / "timings.json"
        self.recorded: dict = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.rows: list[tuple[str, float | None, bool]] = []

    def run(self, name: str, fn):
        from hkllm.files import write_atomic

        started = time.time()
        result, done_before = fn()
        if not done_before:
            self.recorded[name] = round(time.time() - started, 1)
            write_atomic(self.path, json.dumps(self.recorded, indent=1))
        self.rows.append((name, self.recorded.get(name), done_before))
        return result

    def table(self) -> str:
        lines = ["| stage | time |", "|---|---:|"]
        for name, s, earlier in self.rows:
            cell = "—" if s is None else f"{s / 60:.1f} min"
            lines.append(f"| {name} | {cell}{' (earlier run)' if earlier else ''} |")
        total = sum(s for _, s, _ in self.rows if s)
        return "\n".join(lines + [f"| **total** | **{total / 60:.1f} min** |"])
