import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datatrove.data import Document

from hkllm.data.build import build
from hkllm.data.recipe import Quality, load_recipe
from hkllm.data.steps import Decontaminate, MixSampler, QualityFilter, mix_rates


def test_mix_rates_hit_the_target_shares():
    chars = {"yue": 1000, "zh-hant": 500, "en": 2000, "replay": 10_000}
    rates = mix_rates(chars, {"yue": 0.5, "zh-hant": 0.25, "en": 0.25}, replay=0.2, max_repeat=1)
    kept = {g: chars[g] * r for g, r in rates.items()}
    total = sum(kept.values())
    assert kept["replay"] / total == pytest.approx(0.2)
    assert kept["yue"] / total == pytest.approx(0.4)
    assert kept["zh-hant"] / total == pytest.approx(0.2)
    assert max(rates.values()) == pytest.approx(1.0)  # the scarcest group is kept whole, nothing repeated


def test_mix_rates_may_repeat_small_groups_up_to_max_repeat():
    rates = mix_rates({"yue": 100, "en": 1000}, {"yue": 0.5, "en": 0.5}, replay=0, max_repeat=3)
    assert rates["yue"] == pytest.approx(3.0)
    assert rates["en"] == pytest.approx(0.3)


def test_mix_rates_without_shares_keep_natural_proportions():
    rates = mix_rates({"yue": 300, "en": 100, "replay": 1000}, {}, replay=0.5, max_repeat=1)
    assert rates["yue"] == pytest.approx(rates["en"]) == pytest.approx(1.0)
    assert rates["replay"] == pytest.approx(0.4)


def test_mix_sampler_repeats_and_drops_deterministically():
    docs = [Document(text=f"doc {i}", id=str(i), metadata={"variety": "yue"}) for i in range(1000)]
    out = list(MixSampler({"yue": 1.5}, "variety")(iter(docs)))
    assert 1400 < len(out) < 1600
    again = list(MixSampler({"yue": 1.5}, "variety")(iter(docs)))
    assert [d.id for d in out] == [d.id for d in again]


@pytest.mark.parametrize("text,reason", [
    ("短", "too_short"),
    ("重複的句子。\n" * 10, "duplicate_lines"),
    ("哈" * 500, "repetitive"),
    ("$%^&*#@!~" * 10, "symbols"),
    ("電話 1234567890 1234567890 1234567890 123456789 1234567", "digits"),
])
def test_quality_filter_reasons(text, reason):
    assert QualityFilter(Quality(min_chars=5)).filter(Document(text=text, id="x")) == (False, reason)


def test_quality_filter_keeps_prose():
    text = "本署謹此通知，上述道路將於下星期一起暫時封閉，以便進行維修工程。市民應改用其他路線，並留意交通標誌。"
    assert QualityFilter(Quality(min_chars=20)).filter(Document(text=text, id="x")) is True


def test_decontamination_catches_long_and_short_items():
    step = Decontaminate(["香港共有十八個區議會分區，分佈於香港島、九龍及新界。", "Which district is Mong Kok in?"], n=13, min_tokens=6)
    assert step.filter(Document(text="背景：香港共有十八個區議會分區，分佈於香港島。", id="a")) == (False, "eval_overlap")
    assert step.filter(Document(text="Quiz: which district is Mong Kok in? Yau Tsim Mong.", id="b")) == (False, "eval_overlap")
    assert step.filter(Document(text="香港有好多區，旺角好多人。", id="c")) is True


def test_parquet_source(tmp_path):
    pq.write_table(pa.table({"content": ["我哋今日去咗旺角食嘢，仲行咗好耐街，好開心。", None]}), tmp_path / "a.parquet")
    (tmp_path / "r.yaml").write_text(
        "name: p\nworkers: 1\nsources:\n  - {name: pq, type: parquet, path: a.parquet, text_key: content}\n"
        "steps: {minhash: null, heldout: 0, quality: {min_chars: 5}}\n", encoding="utf-8")
    card = build(load_recipe(tmp_path / "r.yaml"), tmp_path / "out", progress=False)
    assert card["train"]["by_variety"]["yue"]["documents"] == 1
    assert card["malformed_records"] == 1
