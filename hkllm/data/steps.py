"""Pipeline steps of `hkllm data build`, each a small datatrove step with `run(data)`.

Filters count what they keep and drop (`dropped_<reason>` in the stats) and write dropped
documents to `rejects/<step>/` for audit. Transforms count what they change.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from hkllm.files import read_jsonl, stable_hash
from hkllm.text import clean, detect, redact_with_counts
from hkllm.text.convert import _opencc

_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


# --- transforms ---------------------------------------------------------------------------------
class Normalize(PipelineStep):
    """Clean text (controls, widths, spaces); optionally Traditional text to HK character forms."""

    name = "normalize"
    type = "🔧 - TRANSFORM"

    def __init__(self, hk_forms: bool = True):
        super().__init__()
        self.hk_forms = hk_forms

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                text = clean(doc.text)
                if self.hk_forms and _HAN.search(text):
                    # tw2t then t2hk: Taiwan and OpenCC forms → HK forms; Simplified passes through.
                    text = _opencc("t2hk").convert(_opencc("tw2t").convert(text))
                if text != doc.text:
                    self.stat_update("changed")
                doc.text = text
            yield doc


class DetectVariety(PipelineStep):
    """Set metadata `variety` (yue, zh-hant, zh-hans, en, other) unless the source fixed it."""

    name = "detect variety"
    type = "🏷 - TAGGER"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                if "variety" not in doc.metadata:
                    doc.metadata["variety"] = detect(doc.text).variety
                self.stat_update(f"variety_{doc.metadata['variety']}")
            yield doc


class Redact(PipelineStep):
    """Replace personal data with [HKID] [PHONE] [EMAIL] [CARD]; counts each type."""

    name = "redact"
    type = "🔧 - TRANSFORM"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                result = redact_with_counts(doc.text)
                for placeholder, n in result.counts.items():
                    self.stat_update(f"redacted_{placeholder.strip('[]').lower()}", value=n)
                if result.counts:
                    self.stat_update("documents_redacted")
                doc.text = result.text
            yield doc


# --- filters ------------------------------------------------------------------------------------
_SYMBOL = re.compile(r"[^\w\s，。、；：？！「」『』（）《》〈〉—…·,.;:?!'\"()\-]")
_DIGIT = re.compile(r"\d")


class QualityFilter(BaseFilter):
    """Length, duplicated lines, repetitiveness (zlib compression ratio), symbol and digit ratios."""

    name = "quality"

    def __init__(self, quality, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.q = quality

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text, q = doc.text, self.q
        n = len(text)
        if n < q.min_chars:
            return False, "too_short"
        if n > q.max_chars:
            return False, "too_long"
        lines = [line for line in text.split("\n") if line.strip()]
        if len(lines) >= 4 and 1 - len(set(lines)) / len(lines) > q.max_duplicate_line_ratio:
            return False, "duplicate_lines"
        if n >= 200:
            raw = text.encode("utf-8")
            if len(zlib.compress(raw, 1)) / len(raw) < q.min_compression_ratio:
                return False, "repetitive"
        if len(_SYMBOL.findall(text)) / n > q.max_symbol_ratio:
            return False, "symbols"
        if len(_DIGIT.findall(text)) / n > q.max_digit_ratio:
            return False, "digits"
        return True


class ExactDedup(BaseFilter):
    """Drop documents whose whitespace-normalised text was already seen in this partition.

    The prepare stage partitions documents by text hash, so identical texts always meet in the
    same partition and a per-task set is a global exact dedup.
    """

    name = "exact dedup"

    def __init__(self, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.seen: set[int] = set()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        h = doc.metadata.get("text_hash") or stable_hash(" ".join(doc.text.split()))
        if h in self.seen:
            return False, "duplicate"
        self.seen.add(h)
        return True


class MixedScriptTokenizer(WordTokenizer):
    """Tokens for MinHash and decontamination: each CJK character is a token, other words are
    split on non-word characters. Chinese has no spaces, so word n-grams would be whole lines."""

    _TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[^\W_]+")

    def __init__(self):
        super().__init__("mixed")

    def word_tokenize(self, text: str) -> list[str]:
        return self._TOKEN.findall(text.lower())

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in re.split(r"(?<=[。！？!?.])\s*|\n+", text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in self._TOKEN.finditer(text)]


class Decontaminate(BaseFilter):
    """Drop training documents that share a token n-gram with an evaluation item.

    Items of at least n tokens contribute their n-grams; shorter items (of at least
    `min_tokens`) contribute their `min_tokens`-grams, so short questions are caught too.
    """

    name = "decontaminate"

    def __init__(self, eval_texts: list[str], n: int = 13, min_tokens: int = 8, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.eval_texts, self.n, self.min_tokens = eval_texts, n, min_tokens
        self.tok = MixedScriptTokenizer()
        self._grams: dict[int, set[tuple]] | None = None

    def grams(self) -> dict[int, set[tuple]]:
        # Built lazily, in the worker process that uses it (the step is pickled to workers).
        if self._grams is None:
            self._grams = {}
            for text in self.eval_texts:
                tokens = self.tok.word_tokenize(text)
                size = self.n if len(tokens) >= self.n else self.min_tokens
                if len(tokens) >= size:
                    self._grams.setdefault(size, set()).update(
                        tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1))
        return self._grams

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        grams = self.grams()
        if not grams:
            return True
        tokens = self.tok.word_tokenize(doc.text)
        for size, known in grams.items():
            if any(tuple(tokens[i : i + size]) in known for i in range(len(tokens) - size + 1)):
                return False, "eval_overlap"
        return True


def load_eval_texts(paths: list[Path]) -> list[str]:
    """Evaluation items from JSONL (every string value), TSV (last column) or plain text (lines)."""
    texts: list[str] = []
    for path in paths:
        if path.suffix == ".jsonl":
            for _, record in read_jsonl(path):
                values = record.values() if isinstance(record, dict) else [record]
                for v in values:
                    if isinstance(v, str):
                        texts.append(v)
                    elif isinstance(v, list):
                        texts.extend(x for x in v if isinstance(x, str))
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            if path.suffix == ".tsv":
                texts.append(line.split("\t")[-1])
            else:
                texts.append(line)
    return texts


# --- split and mix ------------------------------------------------------------------------------
def mix_group(doc: Document, by: str) -> str:
    return "replay" if doc.metadata.get("replay") else str(doc.metadata.get(by))


class Split(PipelineStep):
    """Tag each document `train` or `heldout` by a hash of its id (stable across runs) and count
    characters per mixing group, which the mix stage reads to set its sampling rates."""

    name = "split"
    type = "✂️ - SPLIT"

    def __init__(self, heldout: float, mix_by: str):
        super().__init__()
        self.heldout = heldout
        self.mix_by = mix_by

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            heldout = (stable_hash("split:" + doc.id) % 10_000) < self.heldout * 10_000
            doc.metadata["split"] = "heldout" if heldout else "train"
            self.stat_update(doc.metadata["split"])
            if not heldout:
                self.stat_update(f"chars_{mix_group(doc, self.mix_by)}", value=len(doc.text))
            yield doc


class MixSampler(PipelineStep):
    """Keep each document `rate` times on average (rate per group, from the mix targets):
    floor(rate) copies, plus one more with probability frac(rate), decided by a hash so the
    choice is the same on every run."""

    name = "mix"
    type = "🎛 - SAMPLER"

    def __init__(self, rates: dict[str, float], mix_by: str, seed: int = 0):
        super().__init__()
        self.rates, self.mix_by, self.seed = rates, mix_by, seed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            rate = self.rates.get(mix_group(doc, self.mix_by), 0.0)
            whole, frac = int(rate), rate - int(rate)
            u = (stable_hash(f"mix:{self.seed}:{doc.id}") % 1_000_000) / 1_000_000
            copies = whole + (u < frac)
            if copies == 0:
                self.stat_update("dropped")
            for k in range(copies):
                self.stat_update("kept")
                yield doc if k == 0 else Document(text=doc.text, id=f"{doc.id}~{k}", metadata=dict(doc.metadata))


def mix_rates(chars: dict[str, int], shares: dict[str, float], replay: float, max_repeat: float) -> dict[str, float]:
    """Sampling rate per group so that the kept characters follow the target shares.

    `shares` covers the non-replay groups (renormalised to 1 - replay); empty `shares` keeps
    their natural proportions. The largest total that no group has to exceed `max_repeat`
    copies for is chosen, so by default (max_repeat 1) documents are only ever dropped.
    """
    local = {g: c for g, c in chars.items() if g != "replay"}
    local_total = sum(local.values())
    if shares:
        weights = {g: shares.get(g, 0.0) for g in local}
    else:
        weights = {g: c / local_total for g, c in local.items()} if local_total else {}
    norm = sum(weights.values()) or 1.0
    targets = {g: w / norm * (1 - replay) for g, w in weights.items()}
    if replay > 0:
        targets["replay"] = replay
    total = min((chars.get(g, 0) * max_repeat / t for g, t in targets.items() if t > 0 and chars.get(g, 0) > 0),
                default=0.0)
    # A group with a target share but no data makes the mix impossible to reach: drop it from the
    # budget instead (reported in the data card as achieved share 0).
    return {g: (total * targets.get(g, 0.0) / c if c else 0.0) for g, c in chars.items()}
