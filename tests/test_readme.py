"""Every ```python block of README.md runs as written (each in a fresh namespace).

A block that cannot run here (a path to real weights, torchrun) is marked as a fragment: an
HTML comment ``<!-- fragment: why -->`` on the line before its fence, or a first line
``# fragment: what to fill in``; those are reported as skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, why_skipped)`` for every ```python block of ``text``; ``why_skipped``
    is the fragment marker's text, ``None`` for a block that must run."""
    blocks = []
    for m in _FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        code = m.group(1)
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        first = code.lstrip("\n").split("\n", 1)[0].strip()
        why = None
        if before.startswith("<!-- fragment"):
            why = before.removeprefix("<!--").removesuffix("-->").strip()
        elif first.startswith("# fragment"):
            why = first.removeprefix("#").strip()
        blocks.append((line, code, why))
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_runnable_blocks():
    assert sum(why is None for _, _, why in BLOCKS) >= 6


def test_fragment_markers_are_found():
    text = ("a\n<!-- fragment: needs torchrun -->\n```python\nx = y\n```\n\n"
            "```python\n# fragment: fill in the path\nz = w\n```\n\n```python\nv = 1\n```\n")
    assert [why for _, _, why in python_blocks(text)] == [
        "fragment: needs torchrun", "fragment: fill in the path", None]


@pytest.mark.parametrize("line, code, why", BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_readme_block_runs(line, code, why, tmp_path, monkeypatch):
    if why is not None:
        pytest.skip(why)
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md:{line}", "exec"), namespace)
