"""Renderer teardown: envs never closed, and worker processes, exit without EGL tracebacks (issue 15.14)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNCLOSED = """
from vla import envs
kept = []
for suite in ("metaworld", "tabletop"):
    s = envs.get_suite(suite)
    kept.append(s.make_env(s.tasks()[0], image_size=16))
    kept[-1].reset(seed=0)  # renders; the env is never closed, and lives until the interpreter exits
print("rendered")
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": "egl", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _clean(stderr: str) -> bool:
    return "Traceback" not in stderr and "EGL" not in stderr and "Exception ignored" not in stderr


def test_envs_never_closed_exit_without_egl_errors(tmp_path):
    run = _run(["-c", UNCLOSED], tmp_path)
    assert run.returncode == 0 and "rendered" in run.stdout, run.stderr
    assert _clean(run.stderr), run.stderr


def test_eval_with_two_workers_exits_cleanly(tmp_path):
    run = _run(["-m", "vla.cli", "eval", "--policy", "zero", "--suite", "tabletop", "--tasks",
                "lift-block,open-drawer", "--episodes", "1", "--max-steps", "2", "--workers", "2",
                "--videos", "0", "--image-size", "16", "-q", "--out", str(tmp_path / "eval")], tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _clean(run.stderr), run.stderr


def test_renderers_are_made_without_shadows_reflections_or_multisampling():
    """What a software renderer would spend most of a frame on is off (see `bench/render.py`)."""
    import mujoco

    from vla import envs

    for suite in ("metaworld", "tabletop"):
        s = envs.get_suite(suite)
        env = s.make_env(s.tasks()[0], image_size=16)
        try:
            env.reset(seed=0)  # a renderer may be made with the first frame
            renderer = env.unwrapped._renderer
            assert renderer.model.vis.quality.offsamples == 0, suite
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                assert renderer.scene.flags[flag] == 0, (suite, flag)
        finally:
            env.close()
