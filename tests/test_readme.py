"""The README's Python snippets run as written, on a tiny policy (paths and lengths scaled down)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_snippets() -> list[str]:
    """Every indented README block that starts with `from vla`, dedented."""
    blocks = re.findall(r"\n\n((?:    from vla.*\n)(?:(?:    .*)?\n)*)", (ROOT / "README.md").read_text())
    return [re.sub(r"^    ", "", block, flags=re.M) for block in blocks]


def test_the_readme_has_its_snippets():
    assert len(python_snippets()) >= 2 and any("ControlLoop" in s for s in python_snippets())


@pytest.fixture(scope="module")
def tiny_run(metaworld_store, tmp_path_factory):
    from tests.conftest import tiny_config
    from vla.train import train

    return train(tiny_config(metaworld_store, tmp_path_factory.mktemp("readme") / "run", steps=1), progress=False).out


@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_readme_snippet_runs(index, tiny_run, monkeypatch):
    snippet = python_snippets()[index]
    assert "runs/quickstart/policy" in snippet  # the quickstart's policy, here a tiny one of 32x32 frames
    scaled = {"runs/quickstart/policy": str(tiny_run), "image_size=64": "image_size=32", "range(200)": "range(3)",
              "duration=10": "duration=0.5"}  # fmt: skip
    for old, new in scaled.items():
        snippet = snippet.replace(old, new)
    monkeypatch.chdir(ROOT)  # configs/robot/... as from a checkout
    exec(compile(snippet, f"README snippet {index}", "exec"), {})
