"""Assertions shared by the CLI tests."""

from __future__ import annotations

from nas.cli import main


def fails_in_one_line(capsys, argv, *needles) -> str:
    """Run ``nas ARGV``: exit status 2, exactly one ``nas: error:`` line on stderr holding every needle."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("nas: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err
