"""hwnas."""

from __future__ import annotations


def hwnas_version() -> str:
    """The installed hwnas version, else the one in the source tree's ``pyproject.toml``, else ``unknown``."""
    import importlib.metadata

    try:
        return importlib.metadata.version("hwnas")
    except importlib.metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        try:
            pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "unknown"
