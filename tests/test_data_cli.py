"""`vla data info|check` and the store's answers to corruption, through the CLI a user runs."""

import json
from pathlib import Path

import pytest

from vla import keys
from vla.cli import main
from vla.datasets.store import StoreError, TrajectoryStore


def _chunk_files(store_path: Path, key: str) -> list[Path]:
    return sorted(p for p in (store_path / "data" / key / "c").rglob("*") if p.is_file())


def test_info_json(small_store, capsys):
    assert main(["data", "info", str(small_store), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["episodes"] == 6 and info["steps"] == sum(range(5, 11))
    assert info["keys"][keys.OBS_STATE] == {
        "shape": [4],
        "dtype": "float32",
        "units": info["keys"][keys.OBS_STATE]["units"],
    }
    assert info["tasks"] == {"task-0": 2, "task-1": 2, "task-2": 2}
    assert info["cameras"] == ["front"]
    assert info["bytes_on_disk"] > 0 and info["compression_ratio"] > 0


def test_info_text(small_store, capsys):
    assert main(["data", "info", str(small_store)]) == 0
    out = capsys.readouterr().out
    assert "episodes 6" in out and "do thing 3" in out and "compression" in out


def test_check_clean_store(small_store, capsys):
    assert main(["data", "check", str(small_store)]) == 0
    assert "OK" in capsys.readouterr().out


def test_check_names_a_deleted_chunk(small_store, capsys):
    _chunk_files(small_store, keys.ACTION)[0].unlink()
    assert main(["data", "check", str(small_store)]) == 1
    assert "data/action: 1 of 1 chunk files are missing" in capsys.readouterr().out


def test_check_and_load_name_a_corrupt_chunk(small_store, capsys):
    _chunk_files(small_store, keys.OBS_STATE)[0].write_bytes(b"not zstd at all")
    assert main(["data", "check", str(small_store)]) == 1
    assert "data/observation.state: steps 0..44 do not decode" in capsys.readouterr().out
    with pytest.raises(StoreError, match="run `vla data check`"):
        TrajectoryStore.open(small_store).episode(0)


def test_truncated_store_is_one_line_error(small_store, capsys):
    import zarr

    data = zarr.open_array(small_store / "data" / keys.ACTION, mode="r+")
    data.resize((10, 4))  # a copy that lost its tail
    assert main(["data", "info", str(small_store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated" in err and "data/action holds 10" in err
    assert main(["data", "check", str(small_store)]) == 1


def test_missing_store(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "nope.zarr")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_a_reader_that_stops_reading_is_no_traceback(small_store):
    """`vla data info S | head -1`: the pipe's reader is gone before vla writes; vla stops quietly, as tools
    killed by SIGPIPE do (exit 141), with nothing on stderr. Every command goes through the same main."""
    import os
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader has already gone (head -1 read its line and exited)
    try:
        proc = subprocess.run([sys.executable, "-m", "vla.cli", "data", "info", str(small_store)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141
