"""`vla collect --kind video|image-text`: action-free clips from both suites, captioned tabletop scenes."""

import re

import numpy as np
import pytest

from vla import keys
from vla.cli import main
from vla.datasets.store import TrajectoryStore
from vla.envs.tabletop import captions
from vla.envs.tabletop.env import TabletopEnv
from vla.envs.tabletop.scene import FREE_OBJECTS
from vla.envs.tabletop.splits import COLOURS

STATIC, WRIST = keys.image_key("static"), keys.image_key("wrist")


def collect(out, *args):
    return main(["collect", "--image-size", "32", "-q", "--out", str(out), *args])


def test_video_from_tabletop_is_the_robot_episodes_without_state_or_action(tmp_path):
    common = ["--suite", "tabletop", "--tasks", "lift-block", "--episodes-per-task", "2"]
    assert collect(tmp_path / "video.zarr", *common, "--kind", "video", "--frame-stride", "2") == 0
    assert collect(tmp_path / "robot.zarr", *common) == 0
    video, robot = TrajectoryStore.open(tmp_path / "video.zarr"), TrajectoryStore.open(tmp_path / "robot.zarr")
    assert video.kind == "video" and set(video.specs) == {STATIC, WRIST}  # no observation.state, no action
    assert video.fps == robot.fps / 2
    assert video.meta(keys.SOURCE).tolist() == ["video", "video"] and video.meta(keys.SUCCESS).all()
    assert video.meta(keys.SEED).tolist() == robot.meta(keys.SEED).tolist()
    for i in range(2):
        assert video.episode_meta(i)[keys.INSTRUCTION] == robot.episode_meta(i)[keys.INSTRUCTION] != ""
        for key in (STATIC, WRIST):
            np.testing.assert_array_equal(video.episode(i)[key], robot.episode(i)[key][::2])
    assert main(["data", "check", str(tmp_path / "video.zarr")]) == 0
    # Resuming is as for robot stores; another kind at the same path is refused.
    assert collect(tmp_path / "video.zarr", *common, "--kind", "video", "--frame-stride", "2") == 0
    assert TrajectoryStore.open(tmp_path / "video.zarr").num_episodes == 2
    assert collect(tmp_path / "robot.zarr", *common, "--kind", "video", "--append") == 2


def test_video_from_metaworld(tmp_path):
    out = tmp_path / "mw.zarr"
    assert collect(out, "--suite", "metaworld", "--tasks", "reach-v3", "--episodes-per-task", "1", "--kind", "video",
                   "--steps-after-success", "3") == 0  # fmt: skip
    store = TrajectoryStore.open(out)
    assert store.kind == "video" and list(store.specs) == [keys.image_key("corner")] and store.num_episodes == 1
    assert store.episode_meta(0)[keys.INSTRUCTION] and store.episode_meta(0)[keys.TASK] == "reach-v3"
    assert store.episode(0)[keys.image_key("corner")].std() > 5


def test_image_text_from_tabletop(tmp_path):
    out = tmp_path / "captions.zarr"
    args = ["--suite", "tabletop", "--tasks", "place-in-bowl,open-drawer", "--kind", "image-text",
            "--image-size", "64", "--captions-per-image", "3"]  # fmt: skip
    assert collect(out, *args, "--episodes-per-task", "2") == 0
    store = TrajectoryStore.open(out)
    assert store.kind == "image-text" and list(store.specs) == [STATIC] and store.fps == 0
    assert store.num_episodes == store.num_steps == 12  # 2 tasks x 2 scenes x 3 captions, one frame each
    assert set(store.meta(keys.TASK).tolist()) == {"tabletop-scene"}
    assert set(store.meta(keys.SOURCE).tolist()) == {"image-text"}
    seeds, texts = store.meta(keys.SEED).tolist(), store.meta(keys.INSTRUCTION).tolist()
    for scene in range(4):
        assert len(set(seeds[3 * scene : 3 * scene + 3])) == 1 and len(set(texts[3 * scene : 3 * scene + 3])) == 3
        frames = [store.episode(3 * scene + k)[STATIC] for k in range(3)]
        assert all(np.array_equal(frames[0], f) for f in frames)  # one image, several captions
    colour = re.compile(rf"\b({'|'.join(COLOURS)})\b")
    noun = re.compile(rf"\b({'|'.join(n for nouns in captions.NOUNS.values() for n in nouns)})s?\b")
    relation = re.compile(r"\b(left|right|in front of|behind|next to|near|beside|far)\b")
    assert all(colour.search(t) and noun.search(t) for t in texts)
    assert sum(bool(relation.search(t)) for t in texts) >= 4  # every scene leads with a spatial caption
    assert main(["data", "check", str(out)]) == 0
    # A re-run is a no-op; more scenes per task resume after the stored ones.
    assert collect(out, *args, "--episodes-per-task", "2") == 0
    assert TrajectoryStore.open(out).num_episodes == 12
    assert collect(out, *args, "--episodes-per-task", "3") == 0
    assert TrajectoryStore.open(out).meta(keys.INSTRUCTION).tolist()[:12] == texts
    assert TrajectoryStore.open(out).num_episodes == 18


def _mentions(text: str, obj) -> int:
    """Where `text` names `obj` ("red block", "red cube", ...), or -1."""
    hits = [text.find(f"{obj.colour} {n}") for n in captions.NOUNS[obj.kind] if f"{obj.colour} {n}" in text]
    return min(hits) if hits else -1


def _check_relations(env: TabletopEnv, pool: dict[str, list[str]]) -> int:
    """Every left-right and front-back caption agrees with the objects' world positions (for the static
    camera, right is +x and away from it +y); the first object named is the one the word describes."""
    objects = {o.name: o for o in env.scene_objects("static")}
    checked = 0
    words = {"left-right": ("left", "right", 0), "front-back": ("front", "behind", 1)}  # family: words, world axis
    for family, (word_a, word_b, axis) in words.items():
        for text in pool[family]:
            named = sorted((_mentions(text, o), o) for o in objects.values() if _mentions(text, o) >= 0)
            assert len(named) == 2, text
            (_, first), (_, second) = named
            sign = -1 if word_a in text else 1
            assert word_a in text or word_b in text, text
            assert sign * (first.position[axis] - second.position[axis]) > 0, (text, first, second)
            checked += 1
    return checked


def test_captions_state_true_relations():
    env = TabletopEnv("place-in-bowl", image_size=64, cameras=("static",))
    checked = 0
    for seed in range(4):
        env.reset(seed=seed)
        checked += _check_relations(env, captions.caption_pool(env, "static", np.random.default_rng(seed)))
    assert checked > 20
    env.close()


def test_captions_of_a_constructed_scene():
    """A red block front-left and a blue block back-right: the captions say so, and the frame agrees."""
    env = TabletopEnv("stack-blocks", image_size=64, cameras=("static",))
    env.reset(seed=0)
    scene = env.scene
    for name in FREE_OBJECTS:
        scene.park(name)
    for name in ("bowl", "pad"):
        scene.place_static(name, None)
    scene.place_free("block_0", np.array([-0.15, -0.18, 0.025]))
    scene.place_free("block_1", np.array([0.15, 0.0, 0.025]))
    scene.set_colour("block_0", (0.85, 0.1, 0.1))
    scene.set_colour("block_1", (0.12, 0.25, 0.92))
    env.episode.colours = {"block_0": "red", "block_1": "blue", "drawer": "yellow", "button": "green"}
    scene.forward()

    frame = env.render_camera("static").astype(int)
    red = (frame[..., 0] > 150) & (frame[..., 1] < 80) & (frame[..., 2] < 80)
    blue = (frame[..., 2] > 150) & (frame[..., 0] < 80)
    assert red.sum() > 5 and blue.sum() > 5
    assert np.nonzero(red)[1].mean() < np.nonzero(blue)[1].mean()  # red left of blue in the image
    assert np.nonzero(red)[0].mean() > np.nonzero(blue)[0].mean()  # and lower: nearer the camera

    pool = captions.caption_pool(env, "static", np.random.default_rng(0))
    noun = next(n for n in captions.NOUNS["block"] if f"red {n}" in " ".join(pool["left-right"]))
    assert f"the red {noun} is to the left of the blue {noun}" in pool["left-right"]
    assert f"the blue {noun} is to the right of the red {noun}" in pool["left-right"]
    assert f"the red {noun} is in front of the blue {noun}" in pool["front-back"]
    assert f"the leftmost object is the red {noun}" in pool["extreme"]
    assert "two blocks: red and blue" in pool["count"]
    assert _check_relations(env, pool) >= 4
    assert not any("bowl" in text or "bottle" in text for family in pool.values() for text in family)
    described = captions.describe(env, "static", 3, seed=5)
    assert len(set(described)) == 3 and described == captions.describe(env, "static", 3, seed=5)
    assert re.search(r"\b(left|right|in front of|behind)\b", described[0])  # a spatial caption leads
    env.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--suite", "metaworld", "--kind", "image-text"], "unsupported suite 'metaworld'; valid: tabletop"),
        (["--kind", "audio"], "unknown --kind 'audio'; valid: robot, video, image-text"),
        (["--frame-stride", "2"], "--frame-stride applies to --kind video, not --kind robot"),
        (["--kind", "image-text", "--suite", "tabletop", "--captions-per-image", "0"], "--captions-per-image must be"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bad.zarr"
    assert main(["collect", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def _held_out_things(store) -> int:
    """Objects in the stored scene facts whose colour x kind the unseen split holds out of robot data."""
    from vla.envs.tabletop.caption_facts import Scene
    from vla.envs.tabletop.splits import HELD_OUT_COLOURS

    scenes = [Scene.from_json(s) for s in dict.fromkeys(store.meta(keys.SCENE).tolist())]
    return sum(t.colour in HELD_OUT_COLOURS[t.kind] for s in scenes for t in s.things)


def test_held_out_colours_reach_image_text_and_never_robot_data(tmp_path):
    """--held-out-colours shows the unseen split's colour x kind combinations in image-text scenes; robot data
    of the train split collected beside it (same process, same seeds) shows none, and robot and video
    collection refuse the flag."""
    from vla.envs.tabletop.episodes import KIND_OF, sample_episode
    from vla.envs.tabletop.splits import HELD_OUT_COLOURS

    tasks = ["--suite", "tabletop", "--tasks", "lift-block,open-drawer"]
    args = [*tasks, "--kind", "image-text", "--captions-per-image", "1", "--episodes-per-task", "6"]
    assert collect(tmp_path / "with.zarr", *args, "--held-out-colours") == 0
    assert collect(tmp_path / "without.zarr", *args) == 0
    with_, without = TrajectoryStore.open(tmp_path / "with.zarr"), TrajectoryStore.open(tmp_path / "without.zarr")
    assert with_.meta(keys.SEED).tolist() == without.meta(keys.SEED).tolist()  # the same scenes, recoloured
    assert _held_out_things(with_) >= 3 and _held_out_things(without) == 0
    assert with_.attrs["collect"]["held_out_colours"] is True and "held_out_colours" not in without.attrs["collect"]

    assert collect(tmp_path / "robot.zarr", *tasks, "--episodes-per-task", "1") == 0
    robot = TrajectoryStore.open(tmp_path / "robot.zarr")
    for i, (task, seed) in enumerate(zip(robot.meta(keys.TASK), robot.meta(keys.SEED))):
        colours = sample_episode(str(task), "train", int(seed)).colours
        assert not any(colour in HELD_OUT_COLOURS[KIND_OF[entity]] for entity, colour in colours.items())
        env = TabletopEnv(str(task), image_size=32, cameras=("static", "wrist"))
        env.reset(seed=int(seed), options={"colours": "any"})  # a recoloured scene leaves nothing behind
        first, _ = env.reset(seed=int(seed))
        np.testing.assert_array_equal(robot.episode(i)[STATIC][0], first[STATIC])  # what the robot store shows
        env.close()
    for kind in ("robot", "video"):
        out = tmp_path / f"{kind}-flag.zarr"
        assert collect(out, *tasks, "--kind", kind, "--held-out-colours") == 2
        assert not out.exists()
