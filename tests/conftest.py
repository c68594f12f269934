import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vla import keys  # noqa: E402
from vla.datasets.store import TrajectoryStore  # noqa: E402

CAMERA = keys.image_key("front")
SPECS = {
    CAMERA: keys.image_spec("front", 8),
    keys.OBS_STATE: keys.state_spec("xyz + gripper", 4),
    keys.ACTION: keys.action_spec("dxyz + gripper", 4),
}


def synthetic_episode(i: int, length: int) -> dict[str, np.ndarray]:
    """Episode i: every value encodes (episode, step), so a test can tell exactly what it read."""
    steps = np.arange(length, dtype=np.float32)
    state = np.stack([np.full(length, i, np.float32), steps, steps * 0.5, np.zeros(length, np.float32)], 1)
    image = np.zeros((length, 8, 8, 3), np.uint8)
    image[..., 0] = i % 256
    image[..., 1] = (np.arange(length) % 256)[:, None, None]
    return {CAMERA: image, keys.OBS_STATE: state, keys.ACTION: state + 100}


def add_synthetic(store: TrajectoryStore, i: int, length: int) -> None:
    store.add_episode(
        synthetic_episode(i, length),
        instruction=f"do thing {i}",
        task=f"task-{i % 3}",
        success=i % 2 == 0,
        seed=1000 + i,
        source="expert",
    )


@pytest.fixture
def small_store(tmp_path):
    """A store of 6 synthetic episodes with lengths 5..10."""
    path = tmp_path / "small.zarr"
    with TrajectoryStore.create(path, SPECS, fps=10) as store:
        for i in range(6):
            add_synthetic(store, i, 5 + i)
    return path
