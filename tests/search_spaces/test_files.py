"""The shared helpers for files and errors in ``search_spaces._files``."""

from __future__ import annotations

from search_spaces import short_text


def test_short_text_keeps_a_short_first_paragraph_on_one_line() -> None:
    assert short_text("  cannot load:\n  bad magic number\n\nTry this instead ...") == "cannot load: bad magic number"
    assert short_text("\x1b[31mred\x1b[0m reason") == "red reason"
    assert short_text("") == ""


def test_short_text_cuts_at_a_word_with_an_ellipsis() -> None:
    text = "word " * 100
    short = short_text(text, limit=32)
    assert short.endswith("...") and len(short) <= 35
    assert " ".join(short[:-3].split()) == short[:-3] and short[:-3].split() == ["word"] * 6


def test_short_text_cuts_one_huge_token_at_the_limit() -> None:
    assert short_text("9" * 5000, limit=40) == "9" * 40 + "..."


def test_short_text_keeps_only_the_first_sentence_when_asked() -> None:
    text = "Unsupported global: GLOBAL x.y was not an allowed global. Check the documentation\n\nmore advice"
    assert short_text(text, first_sentence=True) == "Unsupported global: GLOBAL x.y was not an allowed global."
    assert short_text(text) == "Unsupported global: GLOBAL x.y was not an allowed global. Check the documentation"
