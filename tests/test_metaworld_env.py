"""The Meta-World suite meets the suite contract: spaces, upright images, seeding, experts, errors."""

from __future__ import annotations

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from vla import keys
from vla.envs import episode_seed, get_suite, resolve_tasks
from vla.envs.meta_world import CAMERAS, INSTRUCTIONS, MT10, MT50, MetaWorldEnv, MetaWorldExpert
from vla.errors import UserError

IMG = keys.image_key("corner")


@pytest.fixture(scope="module")
def suite():
    return get_suite("metaworld")


@pytest.fixture(scope="module")
def reach(suite):
    env = suite.make_env("reach-v3")
    yield env
    env.close()


def test_groups_are_metaworld_benchmarks(suite):
    assert len(suite.groups["mt10"]) == 10 and len(suite.groups["mt50"]) == 50
    assert set(suite.groups["mt10"]) <= set(suite.groups["mt50"])
    assert suite.tasks() == suite.groups["mt50"]
    assert {"reach-v3", "push-v3", "pick-place-v3", "drawer-close-v3"} <= set(MT10)
    assert suite.splits == ("train", "unseen") and suite.eval_split == "unseen"
    assert set(suite.default_cameras) <= set(suite.cameras)


def test_ml45_groups_are_metaworlds_meta_learning_split(suite):
    train, test = suite.groups["ml45-train"], suite.groups["ml45-test"]
    assert len(train) == 45 and set(test) == {"bin-picking-v3", "box-close-v3", "hand-insert-v3", "door-lock-v3",
                                              "door-unlock-v3"}  # fmt: skip
    assert not set(train) & set(test) and set(train) | set(test) == set(suite.groups["mt50"])
    assert resolve_tasks(suite, "ml45-test") == test


def test_every_task_has_phrasings_and_an_expert(suite):
    assert set(INSTRUCTIONS) == set(MT50)
    for task in MT50:
        phrasings = INSTRUCTIONS[task]
        assert len(set(phrasings)) >= 4, task
        assert all(p and p == p.strip() for p in phrasings), task
    env = suite.make_env("push-v3", cameras=())
    try:
        expert = suite.make_expert(env)
        expert.reset(0)
        env.reset(seed=0)
        action = expert.act(None)
        assert action.dtype == np.float32 and env.action_space.contains(action)
    finally:
        env.close()
    from metaworld.policies import ENV_POLICY_MAP

    assert set(MT50) <= set(ENV_POLICY_MAP)


@pytest.mark.parametrize("task", ["reach-v3", "drawer-open-v3"])
def test_check_env_passes(suite, task):
    env = suite.make_env(task, image_size=32, cameras=("corner", "topview"))
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_spaces_and_feature_specs(reach):
    obs_space, act_space = reach.observation_space, reach.action_space
    assert isinstance(obs_space, gym.spaces.Dict)
    assert set(obs_space) == {IMG, keys.OBS_STATE}
    assert obs_space[IMG].shape == (64, 64, 3) and obs_space[IMG].dtype == np.uint8
    assert obs_space[keys.OBS_STATE].shape == (4,) and obs_space[keys.OBS_STATE].dtype == np.float32
    assert act_space.shape == (4,) and act_space.dtype == np.float32
    np.testing.assert_allclose(act_space.high, [0.01, 0.01, 0.01, 1.0])
    np.testing.assert_allclose(act_space.low, [-0.01, -0.01, -0.01, -1.0])

    obs, info = reach.reset(seed=1)
    assert set(obs) == set(obs_space) and obs_space.contains(obs)
    assert info["task"] == "reach-v3" and info["success"] is False
    assert info["instruction"] == reach.unwrapped.instruction in INSTRUCTIONS["reach-v3"]
    # State is the hand position (m) and gripper opening, straight from Meta-World's raw observation.
    np.testing.assert_allclose(obs[keys.OBS_STATE], reach.unwrapped.raw_obs[:4], rtol=1e-6)
    assert reach.unwrapped.raw_obs.shape == (39,)
    assert reach.unwrapped.fps == pytest.approx(80.0)

    specs = reach.unwrapped.feature_specs()
    assert set(specs) == {IMG, keys.OBS_STATE, keys.ACTION}
    for key, space in [*obs_space.items(), (keys.ACTION, act_space)]:
        assert specs[key].shape == space.shape and specs[key].dtype == space.dtype.name, key


def test_action_is_metres_and_gripper_sign(reach):
    reach.reset(seed=0)
    start = reach.unwrapped.raw_obs[:3].copy()
    for _ in range(20):
        obs, reward, terminated, truncated, info = reach.step(np.array([0.01, 0, 0, 0], np.float32))
        assert terminated is False and truncated is False and isinstance(info["success"], bool)
    moved = reach.unwrapped.raw_obs[:3] - start
    assert 0.12 < moved[0] < 0.21 and abs(moved[1]) < 0.01  # ~1 cm per step, the hand lags its mocap
    for _ in range(15):
        obs, *_ = reach.step(np.array([0, 0, 0, 1.0], np.float32))
    closed = obs[keys.OBS_STATE][3]
    for _ in range(15):
        obs, *_ = reach.step(np.array([0, 0, 0, -1.0], np.float32))
    assert obs[keys.OBS_STATE][3] > closed + 0.3  # +1 closes, -1 opens


def test_truncates_at_max_episode_steps_even_past_metaworld_limit(suite):
    env = suite.make_env("reach-v3", cameras=(), max_episode_steps=503)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(4, np.float32))[3] for _ in range(503)]
        assert not any(flags[:-1]) and flags[-1]
    finally:
        env.close()


def test_seed_fixes_the_episode(suite):
    env = suite.make_env("push-v3")
    try:
        first, info = env.reset(seed=7)
        for _ in range(5):
            env.step(env.action_space.sample())
        again, info_again = env.reset(seed=7)
        other, _ = env.reset(seed=8)
    finally:
        env.close()
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert info["instruction"] == info_again["instruction"]
    assert not np.array_equal(first[IMG], other[IMG])


def test_a_reused_env_starts_an_episode_as_a_fresh_one_does(suite):
    """push-v3 places its goal from where the last episode left the puck; the next episode's first frame
    must not show that (a collect worker reuses its env across episodes: issue 15, workers 1 vs 2)."""
    used, fresh = suite.make_env("push-v3"), suite.make_env("push-v3")
    try:
        expert = suite.make_expert(used)
        seeds = [episode_seed(0, "metaworld", "train", "push-v3", attempt) for attempt in (0, 1)]
        used.reset(seed=seeds[0])
        expert.reset(seeds[0])
        for _ in range(40):  # the expert has pushed the puck off level
            used.step(expert.act(None))
        again, _ = used.reset(seed=seeds[1])
        first, _ = fresh.reset(seed=seeds[1])
    finally:
        used.close()
        fresh.close()
    for key in first:
        np.testing.assert_array_equal(again[key], first[key], err_msg=key)


def _rendered_rotated(env: MetaWorldEnv, camera: str) -> np.ndarray:
    """Render `camera` straight from mujoco after rolling it 180 degrees about its optical axis."""
    model, data = env._mw.model, env._mw.data
    cam_id = model.camera(camera).id
    saved = model.cam_quat[cam_id].copy()
    roll = np.array([0.0, 0.0, 0.0, 1.0])  # 180 degrees about the camera's z (viewing) axis
    mujoco.mju_mulQuat(model.cam_quat[cam_id], saved, roll)
    try:
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)
        with mujoco.Renderer(model, env.image_size, env.image_size) as renderer:
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            renderer.update_scene(data, camera=camera)
            return renderer.render().copy()
    finally:
        model.cam_quat[cam_id] = saved
        mujoco.mj_kinematics(model, data)
        mujoco.mj_camlight(model, data)


def test_corner_image_is_upright(suite):
    env = suite.make_env("drawer-open-v3", cameras=("corner", "corner3"))
    try:
        obs, _ = env.reset(seed=0)
        # The corner camera's image-up points at the floor: the upright view is the same camera rolled
        # by 180 degrees, rendered by mujoco directly.
        up = env.unwrapped._mw.data.cam("corner").xmat.reshape(3, 3)[:, 1]
        assert up[2] < 0
        for cam in ("corner", "corner3"):
            upright = _rendered_rotated(env.unwrapped, cam)
            image = obs[keys.image_key(cam)]
            assert np.abs(image.astype(int) - upright).mean() < 1.0, cam
            assert np.abs(image.astype(int) - upright[:, ::-1]).mean() > 10.0, cam  # not mirrored
        # And the scene agrees: the brown wooden tabletop fills the lower half, the grey floor/wall the top.
        image = obs[IMG].astype(int)
        brown = (image[..., 0] - image[..., 2]) > 30
        assert brown[32:].mean() > 2 * brown[:32].mean()
    finally:
        env.close()


@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "drawer-close-v3"])
def test_expert_succeeds(suite, task):
    env = suite.make_env(task, cameras=())
    expert = suite.make_expert(env)
    try:
        for seed in range(2):
            obs, _ = env.reset(seed=seed)
            expert.reset(seed)
            for _ in range(300):
                action = expert.act(obs)
                assert env.action_space.contains(action)
                obs, _, _, _, info = env.step(action)
                if info["success"]:
                    break
            assert info["success"], (task, seed)
    finally:
        env.close()


def test_expert_noise_is_seeded(reach):
    expert = MetaWorldExpert(reach)
    reach.reset(seed=0)
    expert.reset(3)
    a = expert.act(None)
    expert.reset(3)
    assert np.array_equal(a, expert.act(None))
    expert.reset(4)
    assert not np.array_equal(a, expert.act(None))


def test_bad_choices_raise_user_errors(suite):
    with pytest.raises(UserError, match="reach-v3") as err:
        suite.make_env("reach-v99")
    assert "reach-v99" in str(err.value)
    with pytest.raises(UserError, match="corner2") as err:
        suite.make_env("reach-v3", cameras=("wrist",))
    assert "wrist" in str(err.value) and all(cam in str(err.value) for cam in CAMERAS)
    for size in (8, 100_000, 64.5):
        with pytest.raises(UserError, match="image_size"):
            suite.make_env("reach-v3", image_size=size)
    with pytest.raises(UserError, match="train, unseen"):
        suite.make_env("reach-v3", split="test")


def test_close_twice_and_gym_registration():
    env = gym.make("vla/metaworld-reach-v3", image_size=16)
    obs, _ = env.reset(seed=0)
    assert obs[IMG].shape == (16, 16, 3)
    env.close()
    env.close()
    env.unwrapped.close()
    assert all(f"vla/metaworld-{task}" in gym.registry for task in MT50)
