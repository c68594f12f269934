"""The benchmark scripts as a user meets them: --help describes each in whole sentences; no codec noise."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from vla import keys
from vla.datasets.store import TrajectoryStore

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "common.py")


def test_every_bench_help_describes_the_script_in_whole_sentences():
    runs = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=subprocess.PIPE, text=True)
            for p in SCRIPTS}  # fmt: skip
    for name, proc in runs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, name
        description = " ".join(out.split("\n\n")[1].split())  # after the usage lines
        assert description.endswith((".", "?", ")")) and not description.endswith(("the", "a", ",")), (name, out)


def test_the_av1_export_prints_no_encoder_banner(tmp_path, capfd):
    """bench/data_loading.py encodes AV1 with SVT-AV1, which printed ~20 Svt[info] lines per episode."""
    spec = importlib.util.spec_from_file_location("data_loading", BENCH / "data_loading.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    camera = keys.image_key("corner")
    with TrajectoryStore.create(tmp_path / "s.zarr", {camera: keys.image_spec("corner", 64)}, fps=10) as store:
        frames = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
        store.add_episode({camera: frames}, instruction="x", task="t", success=True, seed=0, source="expert")
    capfd.readouterr()
    mp4_dir, _ = bench.export_files(TrajectoryStore.open(tmp_path / "s.zarr"), camera, tmp_path)
    assert (mp4_dir / "0.mp4").stat().st_size > 0
    assert "Svt[info]" not in capfd.readouterr().err
