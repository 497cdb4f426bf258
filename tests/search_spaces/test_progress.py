"""progress_bar draws only when asked for and writing to a terminal."""

from __future__ import annotations

import io

from search_spaces import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(enabled: bool, out: io.StringIO) -> str:
    bar = progress_bar(enabled, total=3, desc="layers", file=out, mininterval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    return out.getvalue()


def test_bar_on_a_terminal_when_enabled() -> None:
    assert "layers" in _draw(True, _Terminal()) and "3/3" in _draw(True, _Terminal())


def test_no_bar_in_a_file_or_pipe() -> None:
    assert _draw(True, io.StringIO()) == ""


def test_no_bar_when_disabled_even_on_a_terminal() -> None:
    assert _draw(False, _Terminal()) == ""
