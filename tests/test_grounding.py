"""Grounding in pixels: retrieval metrics, image shuffles, caption claims checked against scene facts, and a
tiny captioner whose image-text losses fall only when the image carries what the caption says."""

import numpy as np
import pytest
import torch

from vla import keys
from vla.cli import main
from vla.datasets.sampler import WindowDataset
from vla.datasets.store import TrajectoryStore
from vla.envs.tabletop import captions
from vla.envs.tabletop.caption_facts import (
    Scene,
    Thing,
    check,
    parse,
    referents,
    scene_facts,
    template_of,
    truth_shares,
)
from vla.envs.tabletop.env import TabletopEnv
from vla.errors import UserError
from vla.grounding import derangement, retrieval_ranks, topk_accuracy
from vla.policies.config import PolicyConfig, with_preset
from vla.policies.vla_policy import VLAPolicy


# --- retrieval --------------------------------------------------------------------------------------
def test_retrieval_ranks_and_topk():
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [2.0, 9.0, 1.0], [1.0, 1.0, 1.0]])
    own = np.array([0, 1, 2, 2])
    ranks = retrieval_ranks(scores, own)
    assert ranks.tolist() == [0, 0, 2, 2]  # the last caption scores every scene alike: ranked last, not first
    assert topk_accuracy(ranks, 1) == 0.5 and topk_accuracy(ranks, 2) == 0.5 and topk_accuracy(ranks, 3) == 1.0
    with pytest.raises(ValueError, match="one own scene per caption"):
        retrieval_ranks(scores, own[:2])


def test_a_model_that_ignores_the_image_is_at_chance_or_below():
    rng = np.random.default_rng(0)
    per_caption = rng.normal(size=(200, 1))  # the caption's prior: the same under every scene
    ranks = retrieval_ranks(np.repeat(per_caption, 20, axis=1), rng.integers(0, 20, 200))
    assert topk_accuracy(ranks, 1) == 0.0 and topk_accuracy(ranks, 5) == 0.0


@pytest.mark.parametrize("groups", [[0, 0, 0, 1, 1, 1], [5, 5, 1, 2, 3, 3, 3, 4], list(range(7))])
def test_derangement_sends_every_item_to_another_group(groups):
    groups = np.array(groups)
    for seed in range(5):
        shown = derangement(groups, np.random.default_rng(seed))
        assert sorted(shown.tolist()) == list(range(len(groups)))  # a permutation
        assert (groups[shown] != groups).all()


def test_derangement_refuses_a_group_of_more_than_half():
    with pytest.raises(ValueError, match="one group holds 3 of 4"):
        derangement(np.array([1, 1, 1, 2]), np.random.default_rng(0))


# --- caption claims ---------------------------------------------------------------------------------
def _scene() -> Scene:
    """A red block front-left, a blue bowl back-right, a green bottle far right, an unseen purple pad."""
    return Scene(
        [Thing("block", "red", -0.2, -0.2, 40), Thing("bowl", "blue", 0.05, 0.0, 90),
         Thing("bottle", "green", 0.25, -0.15, 30), Thing("pad", "purple", 0.0, -0.1, 0),
         Thing("drawer", "yellow", -0.2, 0.3, 200)], drawer_open=True, lamp_on=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "caption, expected",
    [
        ("a red block left of a blue bowl", dict(colour=True, kind=True, relation=True, all=True)),
        ("a red cube right of a blue bowl", dict(colour=True, relation=False, all=False)),
        ("the blue bowl is behind the red block", dict(relation=True, all=True)),
        ("the red block is in front of the green bottle", dict(relation=True)),
        ("the red block is far from the green bottle", dict(relation=True)),
        ("the red block is next to the green bottle", dict(relation=False)),
        ("a purple pad beside a blue bowl", dict(colour=False, kind=False)),  # hidden: not in the image
        ("the pink block is left of the blue bowl", dict(colour=False, kind=True, relation=False)),
        ("three objects on the table: a red block, a blue bowl and a green bottle", dict(count=True, all=True)),
        ("two objects on the table: a red block and a blue bowl", dict(count=False, colour=True, all=False)),
        ("there are two blocks on the table", dict(count=False)),
        ("there is one bowl on the table, a blue bowl", dict(count=True, colour=True)),
        ("the bowl is blue", dict(colour=True)),
        ("the bowl is red", dict(colour=False, kind=True)),
        ("the green object is a bottle", dict(colour=True)),
        ("the green object is a bowl", dict(colour=False)),
        ("the leftmost object is the red block", dict(relation=True)),
        ("the rightmost object is the blue bowl", dict(relation=False)),
        ("the object closest to the camera is the red cube", dict(relation=True)),
        ("the yellow drawer is open", dict(state=True, colour=True)),
        ("a closed yellow drawer", dict(state=False)),
        ("a table", dict(all=None, colour=None)),  # claims nothing
    ],
)
def test_claims_are_checked_against_the_scene(caption, expected):
    result = check(parse(caption), _scene())
    assert {k: result[k] for k in expected} == expected, result


def test_parse_reads_each_family():
    claims = parse("two blocks, a red one and a blue one")
    assert [(m.colour, m.kind) for m in claims.mentions if m.colour] == [("red", "block"), ("blue", "block")]
    assert claims.counts == [("block", 2)]
    rel = parse("the blue mat is to the right of the red cube").relations
    assert [(a.colour, a.kind, r, b.colour, b.kind) for a, r, b in rel] == [("blue", "pad", "right", "red", "block")]
    assert parse("the lamp by the green button is on").states == [("lamp", "on")]
    assert template_of("two blocks: red and blue") == "<n> <kind>: <colour> and <colour>"


def test_truth_shares_count_only_captions_that_make_the_claim():
    shares = truth_shares(["the bowl is blue", "the bowl is red", "a table"], [_scene()] * 3)
    assert shares["colour"] == {"captions": 2, "true": 0.5}
    assert shares["relation"]["captions"] == 0


def test_every_generated_caption_is_true_of_its_scene_facts():
    """The generator and the checker agree: each caption `describe` writes of a rendered scene is true of the
    facts recorded from that scene, and the facts survive JSON."""
    checked = 0
    for task in ("stack-blocks", "place-in-bowl", "open-drawer"):
        env = TabletopEnv(task, image_size=64, cameras=("static",))
        for seed in range(3):
            env.reset(seed=seed)
            facts = Scene.from_json(scene_facts(env, "static").to_json())
            pool = captions.caption_pool(env, "static", np.random.default_rng(seed))
            for family, texts in pool.items():
                for text in texts:
                    result = check(parse(text), facts)
                    assert result["all"] is not False, (family, text, result)
                    checked += result["all"] is True
        env.close()
    assert checked > 100


# --- a tiny captioner: the image must matter ---------------------------------------------------------
COLOURS = {"red": (200, 30, 30), "green": (30, 160, 40), "blue": (30, 60, 220), "yellow": (230, 210, 30)}
KEY = keys.image_key("cam")


def _tiny_captioner(**policy) -> VLAPolicy:
    spec = keys.Spec("uint8", (16, 16, 3), "rgb", "a camera")
    config = PolicyConfig(
        **with_preset(dict(preset="tiny", features={KEY: spec.to_json()}, history=1, contrastive_weight=1.0, **policy))
    )
    torch.manual_seed(0)
    return VLAPolicy(config)


def _pairs(n: int, rng) -> tuple[torch.Tensor, list[str]]:
    """n noisy one-colour 16x16 images and their captions; only the image tells which colour is named."""
    names = rng.choice(list(COLOURS), n)
    base = np.array([COLOURS[c] for c in names], dtype=float)[:, None, None, :]
    images = np.clip(base + rng.normal(0, 12, (n, 16, 16, 3)), 0, 255).astype(np.uint8)
    return torch.as_tensor(images)[:, None], [f"a {c} square" for c in names]  # (n, 1, 16, 16, 3)


def _train(policy: VLAPolicy, shuffle: bool, steps: int = 60) -> None:
    rng = np.random.default_rng(1)
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(steps):
        images, texts = _pairs(16, rng)
        if shuffle:  # each caption under a random image: the image says nothing of the caption
            images = images[torch.as_tensor(rng.permutation(16))]
        loss, _ = policy({KEY: images, keys.CAPTION: texts})
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def _losses(policy: VLAPolicy) -> dict[str, float]:
    images, texts = _pairs(64, np.random.default_rng(7))
    own = policy._image_text_losses({KEY: images, keys.CAPTION: texts})
    other = policy._text_loss({KEY: images.roll(1, 0), keys.CAPTION: texts})
    return {"text": float(own["text"]), "contrastive": float(own["contrastive"]), "text_other": float(other)}


def test_image_text_losses_fall_when_the_image_matters_and_not_when_shuffled():
    """Captions "a <colour> square": 3 of their 4 tokens after [CLS] are the template, the colour (2 bits)
    only the image decides. Trained on matching pairs, the caption loss falls below what the template alone
    allows (log 4 / 4 nats per token) and a wrong image costs; trained on shuffled pairs it stays at that
    floor, a wrong image costs nothing, and the contrastive loss stays near chance."""
    floor = np.log(4) / 4
    grounded, blind = _tiny_captioner(), _tiny_captioner()
    _train(grounded, shuffle=False)
    _train(blind, shuffle=True)
    g, b = _losses(grounded), _losses(blind)
    assert g["text"] < floor - 0.1 and g["text_other"] > g["text"] + 0.2, g
    assert b["text"] > floor - 0.05 and abs(b["text_other"] - b["text"]) < 0.05, b
    assert g["contrastive"] < b["contrastive"] - 0.5, (g, b)


# --- phrase grounding: the object a phrase names, and where it stands ---------------------------------
def test_referents_are_the_visible_objects_colour_and_kind_pick_out():
    scene = _scene()
    scene.things.append(Thing("block", "red", 0.2, 0.2, 40))  # a second red block: "the red block" is ambiguous
    scene.things.append(Thing("block", "blue", 0.1, 0.1, 40))  # a blue block beside the blue bowl: kinds differ
    found = referents(scene)
    kinds = [("blue", "bowl"), ("green", "bottle"), ("yellow", "drawer"), ("blue", "block")]
    assert [(r.colour, r.kind) for r in found] == kinds  # the hidden purple pad is not there either
    assert (found[1].lateral, found[1].depth) == (0.25, -0.15)
    assert [found[3].phrase(v) for v in range(3)] == ["the blue block", "the blue cube", "the blue block"]


def test_image_text_windows_ground_an_object_of_their_own_scene(tmp_path):
    out = tmp_path / "captions.zarr"
    args = ["--suite", "tabletop", "--tasks", "place-in-bowl,stack-blocks", "--kind", "image-text"]
    args += ["--episodes-per-task", "2", "--captions-per-image", "3", "--out", str(out)]
    assert main(["collect", "-q", *args]) == 0
    store = TrajectoryStore.open(out)
    data = WindowDataset(store)
    named = set()
    for i in range(len(data)):
        window = data[i]
        scene = Scene.from_json(store.meta(keys.SCENE)[window["episode_index"]])
        where = {r.phrase(v): (r.lateral, r.depth) for r in referents(scene) for v in range(3)}
        assert not window[keys.pad_key(keys.REFERENT_POSITION)]
        assert tuple(window[keys.REFERENT_POSITION]) == pytest.approx(where[window[keys.REFERRING_EXPRESSION]])
        named.add((int(store.meta(keys.SEED)[window["episode_index"]]), window[keys.REFERRING_EXPRESSION]))
    assert len(named) == len(data)  # a scene's three captions each ground another object


FIELD = 0.6  # m the 32-pixel image spans
KEY32 = keys.image_key("cam")


def _one_square(n: int, rng, blind: bool = False) -> dict:
    """n 32x32 grey images with a red 6-pixel square at a random place, the phrase "the red block" for all, and
    the square's centre (m, centred) as the referent's position; `blind`: a random position instead, which
    the image says nothing of."""
    images = np.full((n, 32, 32, 3), 128, np.uint8)
    corners = rng.integers(0, 26, (n, 2))
    for image, (r, c) in zip(images, corners):
        image[r : r + 6, c : c + 6] = (220, 30, 30)
    centres = rng.integers(0, 26, (n, 2)) + 3 if blind else corners + 3
    target = np.stack([(centres[:, 1] / 32 - 0.5) * FIELD, (0.5 - centres[:, 0] / 32) * FIELD], axis=1)
    return {KEY32: torch.as_tensor(images)[:, None], keys.CAPTION: ["a picture"] * n,
            keys.REFERRING_EXPRESSION: ["the red block"] * n, keys.REFERENT_POSITION: torch.as_tensor(target).float(),
            keys.pad_key(keys.REFERENT_POSITION): torch.zeros(n, dtype=torch.bool)}  # fmt: skip


def _grounder() -> VLAPolicy:
    spec = keys.Spec("uint8", (32, 32, 3), "rgb", "a camera")
    config = PolicyConfig(**with_preset(dict(
        preset="tiny", features={KEY32: spec.to_json()}, history=1, text_weight=0.0, grounding_weight=1.0,
        vision_stem="conv", vision_keypoints=16, vision_film=True,
    )))  # fmt: skip
    torch.manual_seed(0)
    return VLAPolicy(config)


def test_fresh_keypoints_move_with_the_image():
    """At initialisation the keypoints already follow what the image shows: with the trunk's std-0.02 init on
    their logits every map was near uniform and each keypoint near the image centre for any image
    and grounding stalled for hundreds of steps."""
    policy, batch = _grounder(), _one_square(32, np.random.default_rng(0))
    keypoints, seen = policy.model.vision["cam"].keypoints, []
    keypoints.register_forward_hook(lambda module, args, out: seen.append(args[0]))  # the patch features
    with torch.no_grad():
        policy._observation_tokens({KEY32: batch[KEY32]}, policy._lang(batch[keys.REFERRING_EXPRESSION]))
        weights = keypoints.logits(seen[0]).softmax(dim=1)  # (N, patches, K)
        xy = torch.einsum("npk,pc->nkc", weights, keypoints.xy)  # (N, K, 2) in [-1, 1]
    assert xy.std(0).mean() > 0.008, xy.std(0).mean()  # 0.016 here; 0.0018 from the std-0.02 start


def _grounding_error(blind: bool, steps: int = 150) -> float:
    policy, rng = _grounder(), np.random.default_rng(0)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    for _ in range(steps):
        loss, _ = policy(_one_square(32, rng, blind))
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    with torch.no_grad():
        _, metrics = policy(_one_square(128, np.random.default_rng(9)))  # held out, the positions true
    return metrics["grounding_error_cm"]


def test_phrase_grounding_reads_where_the_object_is_from_the_image():
    """One phrase for every image, so only the pixels tell where its object is: trained on true positions the
    [ACT] readout finds the square (the image centre is ~14 cm from it on average); trained on positions the
    image does not show, it cannot."""
    grounded, blind = _grounding_error(blind=False), _grounding_error(blind=True)
    assert grounded < 5.0 and blind > 10.0, (grounded, blind)


def test_locate_answers_in_metres_and_refuses_bad_calls():
    policy = _grounder().eval()
    frames = _one_square(3, np.random.default_rng(0))[KEY32][:, 0].numpy()
    where = policy.locate(frames, ["the red block"] * 3)
    assert where.shape == (3, 2) and np.isfinite(where).all()
    with pytest.raises(UserError, match="3 frames but 2 phrases"):
        policy.locate(frames, ["the red block"] * 2)
    with pytest.raises(UserError, match="unknown camera 'observation.images.wrist'; valid: observation.images.cam"):
        policy.locate(frames, ["the red block"] * 3, key=keys.image_key("wrist"))
    policy.model.grounding = None
    with pytest.raises(UserError, match="no grounding head"):
        policy.locate(frames, ["the red block"] * 3)
