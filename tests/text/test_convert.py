import pytest

from hkllm.text import clean, convert


@pytest.mark.parametrize("source", ["软件网络里面的说明", "軟件網絡裡面的說明", "軟件網絡裏面的説明"])
def test_simplified_taiwan_and_hk_input_all_end_in_hk_forms(source):
    assert convert(source, to="hk") == "軟件網絡裏面的説明"


def test_hk_specific_forms():
    assert convert("说明", to="hk") == "説明"
    assert convert("發展 头发 以后", to="hk") == "發展 頭髮 以後"


def test_hans_and_hant_targets():
    assert convert("軟件網絡裏面", to="hans") == "软件网络里面"
    assert convert("软件网络里面", to="hant") == "軟件網絡裡面"


def test_cantonese_characters_survive_conversion():
    assert convert("你喺邊度？佢哋食咗飯未呀", to="hk") == "你喺邊度？佢哋食咗飯未呀"


def test_unknown_target_is_a_clear_error():
    with pytest.raises(ValueError, match="hk, hant, hans"):
        convert("x", to="tw")


def test_clean_folds_width_and_removes_controls():
    assert clean("ＡＢＣ１２３") == "ABC123"
    assert clean("a\x07b\u200bc\ufeff") == "abc"
    assert clean("  a \t b\u3000c \r\n\n\n\n d ") == "a b c\n\nd"
    # Chinese punctuation stays full-width; ASCII punctuation typed after Chinese becomes full-width
    assert clean("你好，世界。") == "你好，世界。"
    assert clean("你好,世界?") == "你好，世界？"
    assert clean("3,000 and 1:2") == "3,000 and 1:2"
