"""Every notebook in notebooks/ runs top to bottom on a tiny checkpoint and a small real store."""

import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
KERNEL = "vla-test"


@pytest.fixture(scope="module")
def notebook_inputs(metaworld_store, tmp_path_factory):
    """A 1-step tiny checkpoint trained on `metaworld_store`, and a kernelspec running this Python."""
    from ipykernel.kernelspec import install

    from tests.conftest import tiny_config
    from vla.train import train

    tmp = tmp_path_factory.mktemp("notebooks")
    run = train(tiny_config(metaworld_store, tmp / "run", steps=1), progress=False).out
    # A kernelspec of our own whose argv is sys.executable: a user-level `python3` kernel of another
    # environment cannot shadow it, since JUPYTER_PATH is searched before every other location.
    install(kernel_name=KERNEL, prefix=str(tmp / "jupyter"))
    return {
        "JUPYTER_PATH": str(tmp / "jupyter" / "share" / "jupyter"),
        "VLA_POLICY": str(run),
        "VLA_STORE": str(metaworld_store),
        "VLA_SUITE": "metaworld",
        "VLA_TASK": "drawer-close-v3",
        "VLA_MAX_STEPS": "12",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_inputs, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    for name, value in notebook_inputs.items():
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), (
        f"{path.name} is committed with outputs; strip them"
    )
    # Run where a user runs it: `jupyter lab notebooks/` starts kernels in notebooks/.
    client = NotebookClient(nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.get("name") == "stderr")
    assert "IProgress" not in stderr and "Loading weights" not in stderr, stderr  # no noise above the figures


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_defaults_are_taken_from_the_repository_root(path, monkeypatch):
    """Without VLA_* variables, the first cell points at the quickstart's run from the repository root,
    also when the notebook runs in notebooks/."""
    import nbformat

    root = path.parents[1]
    for name in [n for n in os.environ if n.startswith("VLA_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(path.parent)
    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    inputs: dict = {}
    exec(first.source, inputs)  # the inputs cell: names and paths only, nothing runs
    for name in ("POLICY", "STORE"):
        if name in inputs:
            assert inputs[name] == root / "runs" / "quickstart" / ("policy" if name == "POLICY" else "demos.zarr")
