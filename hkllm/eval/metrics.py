"""Evaluation metrics: plain functions over per-item results, no model and no torch.

    from hkllm.eval.metrics import mean_ci, paired_bootstrap, extract_choice, is_refusal
    mean_ci([1, 0, 1, 1])                     # accuracy with a Wilson interval
    paired_bootstrap(new_scores, old_scores)  # is the new model really better on these items?
    extract_choice("答案係 (B)", 4)            # -> 1

Read top to bottom:
  1. uncertainty: mean_ci, proportion_ci (Wilson), paired_bootstrap, mcnemar
  2. answers: normalize_answer, and on top of it self-consistency (distinct_outputs,
     modal_agreement), paraphrase_consistency, and version-to-version flips
  3. text similarity: chrF (corpus and sentence), via sacrebleu
  4. reading a model's answer: extract_choice, is_degenerate, is_looping (is_refusal and simplified_leak,
     from hkllm/text/checks.py, are re-exported)
  5. language modelling: bits_per_byte

Conventions: scores come back as Python floats in dicts (JSON-ready for reports); input with
nothing to measure (no items, no overlapping ids) raises ValueError rather than returning NaN,
so that a broken eval run cannot slip through the release gate as a NaN that compares False
(a count is simply 0: distinct_outputs([]) == 0).
"""

from __future__ import annotations

import math
import numbers
import re
import unicodedata
from collections import Counter
from functools import lru_cache
from statistics import NormalDist

import numpy as np

# Refusals and Simplified leaks are text checks that serving shares, so they live below both.
from hkllm.text.checks import REFUSAL_PATTERNS, is_refusal, simplified_leak  # noqa: F401

# --- uncertainty ------------------------------------------------------------------------------


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


def _is_binary(v) -> bool:
    """0/1 given as bool or integer (numpy's too); 0.0/1.0 floats are scores, not outcomes."""
    return isinstance(v, (bool, np.bool_, numbers.Integral)) and v in (0, 1)


def _as_float_array(values, name: str = "values") -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError(f"{name} is empty: nothing to measure")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _bootstrap_means(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of n_boot resamples (with replacement) of x, in chunks so big evals fit in memory."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = len(x)
    chunk = max(1, 10_000_000 // n)  # at most ~10M indices (80 MB) at a time
    means = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        means.append(x[idx].mean(axis=1))
    return np.concatenate(means)


def _percentile_ci(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1 - confidence
    low, high = np.percentile(boot, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> dict:
    """Wilson score interval for a proportion.

    Why Wilson and not the bootstrap for 0/1 outcomes: at 0% or 100% accuracy, or on small n,
    resampling collapses to a zero-width interval; Wilson stays honest (0/10 → up to 27.8%).
    """
    _check_confidence(confidence)
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp the ends that are exact in theory but a hair off in floating point.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return {"value": p, "ci_low": low, "ci_high": high, "n": n}


def mean_ci(values, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean over items with a percentile-bootstrap interval (deterministic given seed).

    When every value is a 0/1 outcome (bool or int) this is a proportion, and the Wilson
    interval of proportion_ci is returned instead.
    """
    _check_confidence(confidence)
    values = list(values)
    if values and all(_is_binary(v) for v in values):
        return proportion_ci(int(sum(int(v) for v in values)), len(values), confidence)
    x = _as_float_array(values)
    low, high = _percentile_ci(_bootstrap_means(x, n_boot, seed), confidence)
    return {"value": float(x.mean()), "ci_low": low, "ci_high": high, "n": len(x)}


def paired_bootstrap(a, b, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95) -> dict:
    """Difference of two systems' mean scores on the same items, resampling items jointly.

    Pairing matters: both systems see the same hard and easy items, so resampling the
    per-item differences gives a much tighter (and correct) interval than two separate CIs.
    p_value is two-sided: twice the share of resamples whose mean difference is not on the
    observed side of zero (ties at 0 count against, which keeps it conservative), capped at 1;
    1.0 when the observed difference is 0. A p_value of 0 means "below 1/n_boot".
    """
    _check_confidence(confidence)
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: len(a)={len(a)}, len(b)={len(b)}")
    d = _as_float_array(a, "a") - _as_float_array(b, "b")
    diff = float(d.mean())
    boot = _bootstrap_means(d, n_boot, seed)
    low, high = _percentile_ci(boot, confidence)
    if diff > 0:
        p = 2 * float(np.mean(boot <= 0))
    elif diff < 0:
        p = 2 * float(np.mean(boot >= 0))
    else:
        p = 1.0
    return {"diff": diff, "ci_low": low, "ci_high": high, "p_value": min(1.0, p)}


def _as_bool(v, what: str) -> bool:
    if not _is_binary(v):
        raise ValueError(f"{what} must be a bool or 0/1, got {v!r}")
    return bool(v)


def mcnemar(a_correct, b_correct) -> dict:
    """Exact McNemar test on paired right/wrong outcomes of two systems on the same items.

    Only the discordant items carry information: b01 (a wrong, b right) and b10 (a right,
    b wrong). Under "no difference" each discordant item is a fair coin, hence the binomial test.
    """
    a = [_as_bool(v, "a_correct values") for v in a_correct]
    b = [_as_bool(v, "b_correct values") for v in b_correct]
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same items: len(a_correct)={len(a)}, len(b_correct)={len(b)}")
    if not a:
        raise ValueError("a_correct and b_correct are empty: nothing to compare")
    b01 = sum(1 for x, y in zip(a, b) if not x and y)
    b10 = sum(1 for x, y in zip(a, b) if x and not y)
    if b01 + b10 == 0:
        return {"b01": 0, "b10": 0, "p_value": 1.0}
    from scipy.stats import binomtest

    p = binomtest(min(b01, b10), b01 + b10, 0.5, alternative="two-sided").pvalue
    return {"b01": b01, "b10": b10, "p_value": float(p)}


# --- answers: normalization, consistency, flips -----------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TRAILING_PUNCT = re.compile(r"[\s。．.！!？?，,]+$")


def normalize_answer(text: str) -> str:
    """Canonical form for comparing short answers: "  答案 B。" and "答案 b" compare equal.

    NFKC (full-width letters, digits and ！？，． become ASCII), whitespace collapsed and stripped,
    trailing sentence punctuation (ASCII and CJK) removed, ASCII letters lowercased. Chinese
    characters are left alone: 這/这 are different answers here (see simplified_leak).
    """
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"\s+", " ", text).strip()
    text = _TRAILING_PUNCT.sub("", text)
    return text.translate(_ASCII_LOWER)


def _norm(answer):
    """normalize_answer for strings; other answers (a choice index, None for a parse failure) as is."""
    return normalize_answer(answer) if isinstance(answer, str) else answer


def distinct_outputs(outputs) -> int:
    """U@k: how many different answers k samples of the same prompt gave (0 for no outputs)."""
    return len({_norm(o) for o in outputs})


def modal_agreement(outputs) -> float:
    """Share of k samples that agree with the most common answer (1.0 = fully self-consistent)."""
    normed = [_norm(o) for o in outputs]
    if not normed:
        raise ValueError("outputs is empty: no agreement to measure")
    return Counter(normed).most_common(1)[0][1] / len(normed)


def paraphrase_consistency(groups: dict) -> dict:
    """Share of questions answered the same way however they are phrased.

    groups maps a group id to the (extracted) answers given to each phrasing. A group with fewer
    than two answers cannot be inconsistent, so it is skipped rather than counted as a success.
    """
    counted = {gid: answers for gid, answers in groups.items() if len(answers) >= 2}
    if not counted:
        raise ValueError("no group has 2 or more answers: nothing to compare")
    inconsistent = sorted(gid for gid, answers in counted.items() if len({_norm(a) for a in answers}) > 1)
    return {
        "value": 1 - len(inconsistent) / len(counted),
        "n_groups": len(counted),
        "inconsistent": inconsistent,
    }


def _common_ids(old: dict, new: dict) -> tuple[list, list]:
    common = sorted(k for k in old if k in new)
    missing = sorted(k for k in old if k not in new)
    if not common:
        raise ValueError(f"old and new share no item ids ({len(old)} old, {len(new)} new)")
    return common, missing


def flips(old: dict, new: dict) -> dict:
    """Items whose correctness changed between two versions of a model.

    Accuracy can stay flat while many items flip; negative flips (right before, wrong now) are
    the regressions users notice, so they are reported by id. Only ids present in both count;
    ids in old but not new are listed as missing (a shrinking eval set should not go unnoticed).
    """
    common, missing = _common_ids(old, new)
    was = {k: _as_bool(old[k], f"old[{k!r}]") for k in common}
    now = {k: _as_bool(new[k], f"new[{k!r}]") for k in common}
    negative = [k for k in common if was[k] and not now[k]]
    positive = [k for k in common if not was[k] and now[k]]
    n = len(common)
    return {
        "n": n,
        "flip_rate": (len(negative) + len(positive)) / n,
        "negative_flip_rate": len(negative) / n,
        "positive_flip_rate": len(positive) / n,
        "negative_flips": negative,
        "positive_flips": positive,
        "missing": missing,
    }


def answer_flips(old: dict, new: dict) -> dict:
    """Items whose (normalized) answer changed between versions: churn for items with no gold answer."""
    common, missing = _common_ids(old, new)
    changed = [k for k in common if _norm(old[k]) != _norm(new[k])]
    return {"n": len(common), "changed_rate": len(changed) / len(common), "changed": changed, "missing": missing}


# --- text similarity --------------------------------------------------------------------------
# chrF compares character n-grams (1..6, whitespace ignored), so Chinese and Cantonese need no word
# segmentation, unlike BLEU. Defaults are sacrebleu's (chrF2: recall weighted twice precision).


@lru_cache(maxsize=1)
def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF()


def chrf(hypotheses: list[str], references: list[str]) -> float:
    """Corpus chrF (0..100): n-gram statistics summed over all segments, then one F-score."""
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(f"need one reference per hypothesis: {len(hypotheses)} hypotheses, {len(references)} references")
    if not hypotheses:
        raise ValueError("hypotheses is empty: nothing to score")
    return float(_chrf_metric().corpus_score(hypotheses, [references]).score)


def sentence_chrf(hypothesis: str, reference: str) -> float:
    """chrF (0..100) of a single hypothesis against its reference."""
    return float(_chrf_metric().sentence_score(hypothesis, [reference]).score)


# --- reading a model's answer -----------------------------------------------------------------
# Multiple choice: a chat model rarely answers with a bare letter, so the letter is looked for
# in three passes, most explicit first:
#   1. the whole answer is one letter, any case: "b", "(B)", "B。"
#   2. a letter introduced as the answer: "Answer: b", "答案係B", "正確答案是 (C)", then as a
#      choice: "選B", "我揀 C", "option D" (answer frames first, so "Option A is wrong; the
#      answer is C" reads C). A lowercase letter must be bracketed, "(b) Paris", or end the
#      phrase, "answer: b" ("the answer is a bit long" picks nothing).
#   3. the first standalone capital letter in range, not part of a word ("Apple" has no A),
#      skipping "A"/"I" used as an article or pronoun ("A good choice ...", "I think ...").
# Failing that, the text of exactly one choice may occur in the answer; else None.

_ANSWER_WORDS = r"\banswer\b|答案|答"
_CHOICE_WORDS = r"\boption\b|\bchoice\b|選擇|选择|選|选|揀|係|是|為|为"
_FRAME = r"(?:{words})\s*(?:is|should be|would be|係|是|為|为)?\s*:?\s*([(\[【]?)[*\s]*([{letters}])(?![A-Za-z0-9'])"


def _letter_index(letter: str) -> int:
    return ord(letter.upper()) - ord("A")


def _choice_text_index(text: str, choices: list[str]) -> int | None:
    answer = normalize_answer(text)
    found = []
    for i, choice in enumerate(choices):
        c = normalize_answer(choice)
        if not c:
            continue
        # ASCII word edges so that the choice "cat" is not found in "concatenate".
        pattern = ("(?<![a-z0-9])" if c[0].isascii() and c[0].isalnum() else "") + re.escape(c) \
            + ("(?![a-z0-9])" if c[-1].isascii() and c[-1].isalnum() else "")
        if re.search(pattern, answer):
            found.append((len(c), i))
    if not found:
        return None
    found.sort(reverse=True)
    if len(found) > 1 and found[0][0] == found[1][0]:
        return None  # two different choices fit equally well: ambiguous
    return found[0][1]


def extract_choice(text: str, n_choices: int, choices: list[str] | None = None) -> int | None:
    """Index (0 = A) of the option a free-form answer picks, or None when it cannot be read."""
    if not 1 <= n_choices <= 26:
        raise ValueError(f"n_choices must be between 1 and 26, got {n_choices}")
    if choices is not None and len(choices) != n_choices:
        raise ValueError(f"got {len(choices)} choices for n_choices={n_choices}")
    text = unicodedata.normalize("NFKC", text).strip()
    last = chr(ord("A") + n_choices - 1)
    letters = f"A-{last}a-{last.lower()}"

    # 1. the whole answer is a letter
    m = re.fullmatch(rf"[\W_]*([{letters}])[\W_]*", text)
    if m:
        return _letter_index(m.group(1))
    # 2. a letter introduced as the answer, then as a choice
    for words in (_ANSWER_WORDS, _CHOICE_WORDS):
        for m in re.finditer(_FRAME.format(words=words, letters=letters), text, re.IGNORECASE):
            bracket, letter = m.groups()
            rest = text[m.end():]
            if letter.isupper() or (bracket and re.match(r"\*?[)\]】]", rest)) or not re.match(r"[*\s]*[A-Za-z]", rest):
                return _letter_index(letter)
    # 3. the first standalone capital letter
    for m in re.finditer(rf"(?<![A-Za-z0-9'])([A-{last}])(?![A-Za-z0-9'])", text):
        if m.group(1) in "AI" and re.match(r"\s+(?!is\b|was\b)[a-z]", text[m.end():]):
            continue  # "A good choice", "I think": an article or a pronoun, not an option
        return _letter_index(m.group(1))
    if choices:
        return _choice_text_index(text, choices)
    return None


# Degenerate answers: nothing to read. Empty, whitespace or punctuation only, or one unit (a
# Han character or a word) repeated: "", "\n\n\n", "。。。", "好好好好", "the the the".
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]|[^\W_]+")


def is_degenerate(text: str) -> bool:
    units = _UNIT.findall(unicodedata.normalize("NFKC", text).lower())
    return not units or (len(units) > 1 and len(set(units)) == 1)


# Looping answers: they say something, then repeat one piece back to back until the token budget
# runs out ("因為它可能可能可能可能可能可能…", "and Year, and Year, and Year, …", "「「「「「「").
# A piece is 1-4 units (a Han character, a word, a punctuation mark); LOOP_REPEATS copies in a
# row. Not caught by is_degenerate, which needs the whole answer to be one unit.
_LOOP_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]|[^\W_]+|[^\w\s]")
LOOP_REPEATS = 6


def is_looping(text: str, repeats: int = LOOP_REPEATS, longest: int = 4) -> bool:
    units = _LOOP_UNIT.findall(unicodedata.normalize("NFKC", text).lower())
    for n in range(1, longest + 1):
        for start in range(n):          # every alignment of n-unit pieces
            run = 1
            for i in range(start + n, len(units) - n + 1, n):
                run = run + 1 if units[i:i + n] == units[i - n:i] else 1
                if run >= repeats:
                    return True
    return False


# --- language modelling -----------------------------------------------------------------------


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """Summed negative log-likelihood (nats) → bits per UTF-8 byte of the text.

    Per byte, not per token, so that models with different tokenizers (a Cantonese-extended
    vocabulary vs the base one) are compared on the same text on equal terms.
    """
    if n_bytes <= 0:
        raise ValueError(f"n_bytes must be positive, got {n_bytes}")
    return total_nll_nats / (math.log(2) * n_bytes)
