import pytest

from hkllm.text import is_valid_hkid, luhn_valid, redact, redact_with_counts
from hkllm.text.redact import hkid_check_digit


@pytest.mark.parametrize("prefix,digits,check", [("A", "123456", "3"), ("AB", "987654", "3"), ("Z", "683365", "A"),
                                                 ("C", "668668", "9"), ("G", "123456", "A")])
def test_hkid_check_digit(prefix, digits, check):
    assert hkid_check_digit(prefix, digits) == check


@pytest.mark.parametrize("text", ["A123456(3)", "A1234563", "A123456 (3)", "A123456（3）", "AB987654(3)", "G123456(A)"])
def test_valid_hkids_are_redacted(text):
    assert is_valid_hkid(text)
    assert redact(f"身份證號碼 {text} 。") == "身份證號碼 [HKID] 。"


@pytest.mark.parametrize("text", ["A123456(7)", "A1234567", "AB987654(1)", "G123456(0)", "XA123456(3)9"])
def test_invalid_hkids_are_kept(text):
    assert redact(f"編號 {text}") == f"編號 {text}"


@pytest.mark.parametrize("phone", ["9123 4567", "91234567", "9123-4567", "+852 9123 4567", "+85291234567",
                                   "852-2835-1473", "(852) 2835 1473", "2835 1473", "6123 4567", "5123 4567"])
def test_hk_phone_numbers_are_redacted(phone):
    assert redact(f"請致電 {phone} 查詢。") == "請致電 [PHONE] 查詢。"


@pytest.mark.parametrize("text", [
    "In 2023 the fare rose.",             # a year
    "總額 HK$12345678 已繳付",              # an amount
    "Ref. No. 21234567",                  # a reference number
    "交易編號 29876543",                    # a reference number in Chinese
    "日期 20240101",                       # a date written YYYYMMDD
    "人口 7,413,070 人",                   # a population figure
    "電話 1234 5678",                      # 1 is not a leading digit of HK numbers
    "價格 2835.50 元",                      # a decimal
    "帳戶 123 4567 8901",                  # part of a longer digit run
])
def test_numbers_that_are_not_phones_are_kept(text):
    assert redact(text) == text


@pytest.mark.parametrize("text", [
    "2007-2008 年的數字", "2023-2024 年度財政預算案", "Figures from 2007-2008 show a rise.", "2007 – 2008",
    "2007—2008年", "2007～2008年", "2007至2008年", "2019 2020 年度", "from 2007 - 2008", "1997-2047年",
])
def test_year_ranges_are_never_phone_numbers(text):
    """Issue 10: '2007-2008 年' became '[PHONE]'."""
    assert redact(text) == text


@pytest.mark.parametrize("text", ["電話 2012 2018", "Tel: 2012-2018", "+852 2012 2018", "熱線：2007-2008"])
def test_a_year_like_number_said_to_be_a_phone_is_still_redacted(text):
    assert "[PHONE]" in redact(text)


def test_two_phone_numbers_separated_by_a_slash():
    assert redact("9123-4567/9876-5432") == "[PHONE]/[PHONE]"


def test_email():
    assert redact("電郵 enquiry@example.gov.hk。") == "電郵 [EMAIL]。"
    assert redact("GREEN@COMMUNITY recycling") == "GREEN@COMMUNITY recycling"  # a programme name, not an address


@pytest.mark.parametrize("card", ["4111 1111 1111 1111", "4111-1111-1111-1111", "5500005555555559", "378282246310005"])
def test_luhn_valid_cards_are_redacted(card):
    assert luhn_valid(card)
    assert redact(f"card {card} ok") == "card [CARD] ok"


@pytest.mark.parametrize("card", ["4111 1111 1111 1112", "5500005555555550", "1234 5678 9012 3456"])
def test_luhn_invalid_cards_are_kept(card):
    assert not luhn_valid(card)
    assert redact(f"card {card} ok") == f"card {card} ok"


def test_counts_per_type():
    result = redact_with_counts("A123456(3) 9123 4567 a@b.hk 4111111111111111 2835 1473")
    assert result.text == "[HKID] [PHONE] [EMAIL] [CARD] [PHONE]"
    assert result.counts == {"[HKID]": 1, "[PHONE]": 2, "[EMAIL]": 1, "[CARD]": 1}
