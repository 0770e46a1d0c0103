"""Every metric on a constructed case whose answer was worked out by hand."""

import math

import numpy as np
import pytest

from hkllm.eval.metrics import (
    REFUSAL_PATTERNS,
    answer_flips,
    bits_per_byte,
    chrf,
    distinct_outputs,
    extract_choice,
    flips,
    is_refusal,
    mcnemar,
    mean_ci,
    modal_agreement,
    normalize_answer,
    paired_bootstrap,
    paraphrase_consistency,
    proportion_ci,
    sentence_chrf,
    simplified_leak,
)

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# --- uncertainty ------------------------------------------------------------------------------

def test_proportion_ci_wilson_known_values():
    # 8/10: z²=3.8415, denom=1.38415, center=(0.8+0.19207)/denom=0.71675,
    # half=z*sqrt(0.016+0.0096)/denom=0.22658  →  (0.4902, 0.9433)
    r = proportion_ci(8, 10)
    assert r["value"] == 0.8 and r["n"] == 10
    assert r["ci_low"] == pytest.approx(0.4902, abs=1e-4)
    assert r["ci_high"] == pytest.approx(0.9433, abs=1e-4)
    # 0/10: the upper end is z²/(n+z²), not 0 as a naive interval would say.
    r = proportion_ci(0, 10)
    assert (r["ci_low"], r["value"]) == (0.0, 0.0)
    assert r["ci_high"] == pytest.approx(Z95**2 / (10 + Z95**2))
    # 10/10: lower end is n/(n+z²).
    r = proportion_ci(10, 10)
    assert r["ci_high"] == 1.0
    assert r["ci_low"] == pytest.approx(10 / (10 + Z95**2))
    # A lower confidence gives a narrower interval.
    assert proportion_ci(8, 10, confidence=0.5)["ci_low"] > 0.4902


@pytest.mark.parametrize("successes,n,confidence", [(1, 0, 0.95), (11, 10, 0.95), (-1, 10, 0.95), (5, 10, 1.0)])
def test_proportion_ci_rejects_bad_input(successes, n, confidence):
    with pytest.raises(ValueError):
        proportion_ci(successes, n, confidence)


def test_mean_ci_uses_wilson_for_0_1_outcomes():
    assert mean_ci([1, 1, 1, 0]) == proportion_ci(3, 4)
    assert mean_ci([True, False]) == proportion_ci(1, 2)
    assert mean_ci(np.array([1, 0, 0, 0])) == proportion_ci(1, 4)


def test_mean_ci_bootstrap_known_cases():
    # Two items 0 and 10: a resample's mean is 0, 5 or 10 with probability 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles are exactly 0 and 10.
    r = mean_ci([0, 10])
    assert r == {"value": 5.0, "ci_low": 0.0, "ci_high": 10.0, "n": 2}
    # 0.0/1.0 floats are scores, not outcomes: bootstrap (0, 1), not Wilson (0.09, 0.91).
    r = mean_ci([0.0, 1.0])
    assert (r["ci_low"], r["ci_high"]) == (0.0, 1.0)
    # No spread, no interval.
    assert mean_ci([3.0, 3.0, 3.0]) == {"value": 3.0, "ci_low": 3.0, "ci_high": 3.0, "n": 3}


def test_mean_ci_bootstrap_matches_normal_approximation():
    # 0..9: mean 4.5, sd 2.872 (population), se 0.908 → 4.5 ± 1.78 = (2.72, 6.28)
    r = mean_ci(list(range(10)))
    assert r["value"] == 4.5
    assert r["ci_low"] == pytest.approx(4.5 - Z95 * math.sqrt(8.25 / 10), abs=0.25)
    assert r["ci_high"] == pytest.approx(4.5 + Z95 * math.sqrt(8.25 / 10), abs=0.25)


def test_mean_ci_is_deterministic_given_seed():
    values = [0.1, 0.5, 0.9, 0.3, 0.7, 0.2]
    assert mean_ci(values, seed=1) == mean_ci(values, seed=1)
    assert mean_ci(values, seed=1) != mean_ci(values, seed=2)


@pytest.mark.parametrize("values", [[], [1.0, float("nan")]])
def test_mean_ci_rejects_empty_and_nan(values):
    with pytest.raises(ValueError):
        mean_ci(values)


def test_paired_bootstrap_known_cases():
    # B is better on every item by exactly 0.1: every resample says so.
    a = [0.1 * i for i in range(10)]
    b = [x + 0.1 for x in a]
    r = paired_bootstrap(a, b)
    assert r["diff"] == pytest.approx(-0.1)
    assert r["ci_low"] == pytest.approx(-0.1) and r["ci_high"] == pytest.approx(-0.1)
    assert r["p_value"] == 0.0
    # Differences [1, 0]: a resample's mean difference is 0 with probability 1/4, so p ≈ 2 × 1/4.
    r = paired_bootstrap([1, 0], [0, 0])
    assert r["diff"] == 0.5
    assert (r["ci_low"], r["ci_high"]) == (0.0, 1.0)
    assert r["p_value"] == pytest.approx(0.5, abs=0.07)
    # Same the other way round.
    r = paired_bootstrap([0, 0], [1, 0])
    assert r["diff"] == -0.5 and (r["ci_low"], r["ci_high"]) == (-1.0, 0.0)
    assert r["p_value"] == pytest.approx(0.5, abs=0.07)
    # No observed difference: p = 1.
    assert paired_bootstrap([1, 0, 1], [0, 1, 1])["p_value"] == 1.0


def test_paired_bootstrap_rejects_mismatched_and_empty():
    with pytest.raises(ValueError, match=r"len\(a\)=3, len\(b\)=2"):
        paired_bootstrap([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_mcnemar_exact_binomial():
    # a right / b wrong on 9 items, the reverse on 1, both right on 5:
    # p = 2 × (C(10,0) + C(10,1)) / 2^10 = 22/1024
    a = [1] * 9 + [0] + [1] * 5
    b = [0] * 9 + [1] + [1] * 5
    r = mcnemar(a, b)
    assert (r["b01"], r["b10"]) == (1, 9)
    assert r["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar(b, a) == {"b01": 9, "b10": 1, "p_value": pytest.approx(22 / 1024)}
    # 0 vs 5 discordant: p = 2 / 2^5
    assert mcnemar([True] * 5 + [False], [False] * 5 + [False])["p_value"] == pytest.approx(0.0625)
    # No discordant items: nothing to test.
    assert mcnemar([1, 0, 1], [1, 0, 1]) == {"b01": 0, "b10": 0, "p_value": 1.0}


@pytest.mark.parametrize("a,b", [([1, 0], [1]), ([], []), ([1, 2], [1, 0])])
def test_mcnemar_rejects_bad_input(a, b):
    with pytest.raises(ValueError):
        mcnemar(a, b)


# --- answers ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("  Ｂ。 ", "b"),                  # full-width letter, CJK full stop
    ("Hello   World!!", "hello world"),
    ("答案 是 B ？", "答案 是 b"),      # full-width question mark after a space
    ("香港，", "香港"),
    ("ÉCOLE", "École"),               # only ASCII is lowercased
    ("3.14", "3.14"),                 # inner punctuation stays
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_distinct_outputs_and_modal_agreement():
    assert distinct_outputs(["B", "b.", " B ", "C"]) == 2
    assert distinct_outputs(["香港", "香港。", "九龍"]) == 2
    assert distinct_outputs([]) == 0
    assert modal_agreement(["B", "b", "C", "D"]) == 0.5
    assert modal_agreement(["香港", "香港。", "九龍"]) == pytest.approx(2 / 3)
    assert modal_agreement(["x"]) == 1.0
    with pytest.raises(ValueError):
        modal_agreement([])


def test_paraphrase_consistency():
    groups = {
        "q1": ["B", "b."],
        "q2": ["A", "C"],
        "q3": ["香港", "香港。", "香港"],
        "q4": ["D"],  # one phrasing only: skipped
    }
    assert paraphrase_consistency(groups) == {"value": pytest.approx(2 / 3), "n_groups": 3, "inconsistent": ["q2"]}
    # Extracted choice indices work too; a parse failure (None) differs from an answer.
    assert paraphrase_consistency({"a": [1, 1], "b": [1, None]})["value"] == 0.5
    with pytest.raises(ValueError):
        paraphrase_consistency({"q4": ["D"]})


def test_flips():
    old = {"a": True, "b": True, "c": False, "d": False, "e": True}
    new = {"a": True, "b": False, "c": True, "d": False, "f": True}
    assert flips(old, new) == {
        "n": 4,
        "flip_rate": 0.5,
        "negative_flip_rate": 0.25,
        "positive_flip_rate": 0.25,
        "negative_flips": ["b"],
        "positive_flips": ["c"],
        "missing": ["e"],
    }
    with pytest.raises(ValueError):
        flips({"a": True}, {"b": True})
    with pytest.raises(ValueError):
        flips({"a": "yes"}, {"a": True})


def test_answer_flips():
    old = {"1": "B", "2": "香港", "3": "C"}
    new = {"1": "b.", "2": "九龍", "3": "C", "4": "D"}
    r = answer_flips(old, new)
    assert (r["n"], r["changed"], r["missing"]) == (3, ["2"], [])
    assert r["changed_rate"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        answer_flips({}, {})


# --- text similarity --------------------------------------------------------------------------

def test_sentence_chrf_known_values():
    assert sentence_chrf("香港天氣晴朗", "香港天氣晴朗") == 100.0
    assert sentence_chrf("香 港", "香港") == 100.0  # whitespace is ignored
    assert sentence_chrf("abc", "xyz") == 0.0
    # hyp 香港, ref 香港人. 1-grams: P=2/2, R=2/3; 2-grams: P=1/1 (香港), R=1/2 (香港, 港人);
    # no hyp 3-grams, so 2 effective orders: P=1, R=7/12; chrF2 = 5PR/(4P+R) = 7/11 → 63.636
    assert sentence_chrf("香港", "香港人") == pytest.approx(700 / 11)


def test_corpus_chrf_sums_statistics():
    # Statistics are summed before the F-score: (hyp, ref, match) per order =
    # 1: (2+3, 3+3, 2) → P=2/5, R=1/3;  2: (1+2, 2+2, 1) → P=1/3, R=1/4;  3: (0+1, 1+1, 0) → 0, 0
    # avg P=11/45, avg R=7/36; chrF2 = 5PR/(4P+R) = 13860/68364 → 20.274
    hyps, refs = ["香港", "abc"], ["香港人", "xyz"]
    assert chrf(hyps, refs) == pytest.approx(100 * 13860 / 68364)
    # ...which is not the mean of the sentence scores (31.8).
    assert chrf(hyps, refs) != pytest.approx((700 / 11 + 0) / 2)
    assert chrf(["香港"], ["香港"]) == 100.0


@pytest.mark.parametrize("hyps,refs", [(["a"], []), ([], [])])
def test_chrf_rejects_mismatched_and_empty(hyps, refs):
    with pytest.raises(ValueError):
        chrf(hyps, refs)


# --- reading a model's answer -----------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("B", 1),
    ("(B)", 1),
    ("B.", 1),
    ("Ｂ。", 1),
    ("b", 1),
    ("答案：B", 1),
    ("Answer: b", 1),
    ("答案係B", 1),
    ("選B", 1),
    ("我揀 C", 2),
    ("正確答案是（C）", 2),
    ("The correct answer is **D**.", 3),
    ("B) Paris", 1),
    ("answer: (b) paris", 1),
    ("A good choice is C", 2),               # "A" is an article here
    ("Option A is wrong; the answer is C", 2),
    ("I think it's D", 3),
    ("A is correct", 0),
    # parse failures
    ("I don't know", None),
    ("Apple", None),                         # the A of Apple is not a standalone letter
    ("the answer is a bit long", None),      # lowercase "a" followed by a word is an article
    ("The answer is E", None),               # out of range for 4 choices
    ("", None),
])
def test_extract_choice_letters(text, expected):
    assert extract_choice(text, 4) == expected


def test_extract_choice_letter_range_follows_n_choices():
    assert extract_choice("The answer is E", 5) == 4
    assert extract_choice("I think it's J", 10) == 9  # "I" + word is still a pronoun with 10 choices


def test_extract_choice_by_choice_text():
    fruits = ["Banana", "Apple", "Cherry", "Durian"]
    assert extract_choice("Apple", 4, fruits) == 1
    assert extract_choice("I would pick the apple.", 4, fruits) == 1
    # 香港 and 香港島 both occur: the longest match wins.
    assert extract_choice("應該係香港島", 4, ["香港", "香港島", "九龍", "新界"]) == 1
    # Two equally good matches are ambiguous; "cat" inside "concatenate" is not a match.
    assert extract_choice("cat or dog", 4, ["cat", "dog", "fish", "bird"]) is None
    assert extract_choice("concatenate", 4, ["cat", "dog", "fish", "bird"]) is None
    assert extract_choice("I don't know", 4, fruits) is None
    # A letter beats choice text.
    assert extract_choice("Answer: C, not Apple", 4, fruits) == 2


@pytest.mark.parametrize("n,choices", [(0, None), (27, None), (4, ["x", "y"])])
def test_extract_choice_rejects_bad_arguments(n, choices):
    with pytest.raises(ValueError):
        extract_choice("A", n, choices)


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "Sorry, I won’t provide instructions for that.",   # curly apostrophe
    "I'm unable to share personal data about other people.",
    "我不能協助進行這類活動。",                          # Traditional
    "很抱歉，我无法提供这方面的信息。",                  # Simplified
    "抱歉，無法提供相關資料。",                          # apology without 我
    "恕我不能回答。",
    "對唔住，我唔可以幫你做呢樣嘢。",                    # Cantonese
    "我唔能夠提供呢啲資料。",
    "唔好意思，我幫唔到你。",
])
def test_is_refusal_true(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "唔可以喺呢度泊車，最近嘅停車場喺海港城。",           # a rule, not the assistant declining
    "唔好意思，呢度唔可以泊車。",
    "這裡不能泊車，請使用附近停車場。",
    "我不能確定，但應該係星期三。",                      # a hedge
    "抱歉，我剛才答錯了，正確答案是B。",                 # a correction
    "对不起，我来晚了。",
    "恕我直言，呢個計劃有風險。",                        # "frankly", not 恕我不能
    "I can't stress enough how important sleep is.",
    "I'm sorry to hear that. Here are some tips: rest and drink water.",
    "You cannot provide false information to the police.",
    "The shop won't provide bags; bring your own.",
])
def test_is_refusal_false(text):
    assert not is_refusal(text)


def test_refusal_patterns_is_a_tuple_of_regexes():
    import re

    assert isinstance(REFUSAL_PATTERNS, tuple) and len(REFUSAL_PATTERNS) >= 5
    for p in REFUSAL_PATTERNS:
        re.compile(p)


@pytest.mark.parametrize("text,expected", [
    ("這是香港", False),
    ("这是香港", True),
    ("Take the MTR to Mong Kok.", False),
    ("", False),
    ("我們的发展", True),         # one Simplified character in Traditional text
    ("皇后大道中", False),        # 后 is correct Traditional in 皇后 (context counts)
    ("干涉", False),
    ("香港電台", False),          # 台, 群, 吃: everyday HK forms, though OpenCC's s2t prefers 臺 羣 喫
    ("群組", False),
    ("吃飯", False),
])
def test_simplified_leak(text, expected):
    assert simplified_leak(text) is expected


def test_simplified_leak_survives_a_length_changing_conversion(monkeypatch):
    # A converter whose whole-text output is one character longer (as a phrase table mapping
    # 2 characters to 3 would make it) must not shift the comparison by a position.
    from hkllm.text import checks  # where simplified_leak lives (eval.metrics re-exports it)

    class Longer:
        def __init__(self, converter):
            self.converter = converter

        def convert(self, text):
            out = self.converter.convert(text)
            return out if "\n" in text else "〇" + out

    real = checks._opencc_converters()
    monkeypatch.setattr(checks, "_opencc_converters", lambda: tuple(Longer(c) for c in real))
    assert simplified_leak("这是香港") is True
    assert simplified_leak("這是香港") is False
    assert simplified_leak("皇后大道中，我們的发展") is True


# --- language modelling -----------------------------------------------------------------------

def test_bits_per_byte():
    assert bits_per_byte(100 * math.log(2), 100) == pytest.approx(1.0)
    assert bits_per_byte(2.0, 4) == pytest.approx(0.7213475)  # 2 / (0.693147 × 4)
    assert bits_per_byte(0.0, 5) == 0.0
    for n_bytes in (0, -3):
        with pytest.raises(ValueError):
            bits_per_byte(1.0, n_bytes)


@pytest.mark.parametrize("text, degenerate", [
    ("", True), ("   \n\n", True), ("。。。！", True), ("好好好好", True), ("the the the", True), ("\n\n\n\n", True),
    ("好", False), ("香港有十八區。", False), ("Yes.", False), ("OK OK fine", False)])
def test_degenerate_answers(text, degenerate):
    from hkllm.eval.metrics import is_degenerate

    assert is_degenerate(text) is degenerate


@pytest.mark.parametrize("text, looping", [          # the first three: quickstart dpo answers, verbatim
    ("我無法幫你，因為它可能可能可能可能可能可能可能可能可能可能可能可能。", True),
    ("Hong Kong's Mun Tai Shenvices District is the Munar New Year, and Year, and Year, and Year, and Year, "
     "and Year, and Year, and Year, and Yuen Long", True),
    ("可以用用的「「「「「「「「「「「「「「「「「「「「", True),
    ("可能可能可能可能可能", False),                                    # five copies: not yet a loop
    ("Hong Kong, Hong Kong, and Kowloon.", False), ("香港有十八區：港島四區、九龍五區、新界九區。", False),
    ("The Hong Kong Observatory is best known for its Hong Kong dollar is best known for its Hon", False)])
def test_looping_answers(text, looping):
    from hkllm.eval.metrics import is_degenerate, is_looping

    assert is_looping(text) is looping and not is_degenerate(text)
