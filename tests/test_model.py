"""The GR-1 network: attention rules, no leakage, readouts never read, streaming equals recomputation."""

import pytest
import torch

from vla.config import load_config
from vla.errors import UserError
from vla.model.encoders import SpatialSoftmax, VisionEncoder, conv_stem, sincos_2d
from vla.model.gpt import attention, attention_probs
from vla.model.gr1 import GR1
from vla.model.layout import TokenLayout

CFG = load_config(overrides=["policy.preset=tiny"]).policy


def make_model(history=3, cameras=("front",)):
    torch.manual_seed(0)
    return GR1(CFG, list(cameras), image_size=16, state_dim=4, action_dim=4, history=history, chunk=4).eval()


def inputs(B=2, T=5, cameras=("front",), seed=1):
    g = torch.Generator().manual_seed(seed)
    images = {c: torch.randn(B, T, 3, 16, 16, generator=g) for c in cameras}
    return images, torch.randn(B, T, 4, generator=g), torch.randn(B, 384, generator=g)


def test_mask_truth_table():
    # One camera with one image token, one foresight query: per step [STATE IMG | OBS ACT]
    layout = TokenLayout(["cam"], n_img_tokens=1, n_obs_queries=1)
    #         L  S0 I0 O0 A0 S1 I1 O1 A1
    expected = [
        [1, 0, 0, 0, 0, 0, 0, 0, 0],  # LANG reads only the prefix
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # STATE t0: prefix + its own timestep
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # IMG t0
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # OBS t0: prefix + observations <= t0, no readouts
        [1, 1, 1, 0, 0, 0, 0, 0, 0],  # ACT t0
        [1, 0, 0, 0, 0, 1, 1, 0, 0],  # STATE t1: not t0's observations (cacheable per timestep)
        [1, 0, 0, 0, 0, 1, 1, 0, 0],  # IMG t1
        [1, 1, 1, 0, 0, 1, 1, 0, 0],  # OBS t1: observations of t0 and t1
        [1, 1, 1, 0, 0, 1, 1, 0, 0],  # ACT t1
    ]
    assert layout.mask(2).int().tolist() == expected


@pytest.mark.parametrize("text", [0, 3])
def test_the_attention_rules_are_the_same_under_torch_compile(text):
    """Dynamo once evaluated `tensor[None, :] == Kind.PREFIX` to a Python False, which `|` broadcast into
    a mask where nothing read the instruction; traced, the rules must equal the eager ones."""
    model = make_model(history=3)
    kind, step = model.layout.tokens(3, "last", text=text)
    eager = model.trunk.rules(kind, step, kind, step)
    traced = torch.compile(model.trunk.rules, backend="eager", fullgraph=True)(kind, step, kind, step)
    for got, want in zip(traced, eager):
        assert torch.equal(got, want)
    assert eager[0][0, :, 0].all()  # every token reads the prefix


def test_no_future_leakage():
    model = make_model(history=5)
    images, state, lang = inputs()
    with torch.no_grad():
        before = model(lang, model.observation_tokens(images, state))
        images["front"][:, 3:] += 1.0
        state[:, 3:] -= 1.0
        after = model(lang, model.observation_tokens(images, state))
    torch.testing.assert_close(before[:, :3], after[:, :3])  # readouts at t <= 2 ignore t >= 3
    assert (before[:, 3:] - after[:, 3:]).abs().max() > 1e-3  # and the later ones do see it


def test_readouts_are_never_read():
    model = make_model(history=5)
    images, state, lang = inputs()
    with torch.no_grad():
        obs = model.observation_tokens(images, state)
        every_step = model(lang, obs, readouts="all")[:, -1]
        last_only = model(lang, obs, readouts="last")[:, 0]
        model.readout_slots[: model.layout.n_readout // 2].add_(5.0)  # change half of the readouts' input
        changed = model(lang, obs, readouts="last")[:, 0]
    torch.testing.assert_close(every_step, last_only, atol=1e-5, rtol=1e-5)
    half = model.layout.n_readout // 2
    torch.testing.assert_close(changed[:, half:], last_only[:, half:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("action, foresight", [(True, False), (False, True)])
def test_leaving_readouts_out_changes_none_of_the_others(action, foresight):
    """A pass without the [OBS] queries (nothing is foreseen) or without [ACT] (video) gives the readouts it
    keeps exactly as the pass with all of them, over the window and streaming."""
    history, cameras = 3, ("front", "wrist")
    model = make_model(history, cameras)
    images, state, lang = inputs(T=5, cameras=cameras)
    kept = model.layout.readout_slice(action, foresight)
    with torch.no_grad():
        obs = model.observation_tokens(images, state)
        every = model(lang, obs, readouts="all")
        some = model(lang, obs, readouts="all", action=action, foresight=foresight)
        torch.testing.assert_close(some, every[:, :, kept], atol=1e-5, rtol=1e-5)
        cache = model.start_stream(lang)
        for t in range(5):
            streamed = model.stream_step(cache, obs[:, t], foresight=foresight)
            full = model(lang, obs[:, max(0, t - history + 1) : t + 1], readouts="last")[:, 0]
            torch.testing.assert_close(streamed, full[:, model.layout.readout_slice(True, foresight)], atol=1e-5,
                                       rtol=1e-5)  # fmt: skip
    camera_readouts, act = model.split_readouts(some[:, -1], action=action, foresight=foresight)
    assert sorted(camera_readouts) == (sorted(cameras) if foresight else [])
    assert (act is not None) == action
    assert streamed.shape[1] == (model.layout.n_readout if foresight else 1)
    with pytest.raises(ValueError, match="readout tokens"):
        model.split_readouts(every[:, -1], action=action, foresight=foresight)
    with pytest.raises(ValueError, match="reads nothing out"):
        model(lang, obs, readouts="last", action=False, foresight=False)


@pytest.mark.parametrize("cameras, history", [(("front",), 3), (("front", "wrist"), 3), (("front",), 6)])
def test_streaming_equals_full_window_recomputation(cameras, history):
    T = 2 * history + 2
    model = make_model(history, cameras)
    images, state, lang = inputs(T=T, cameras=cameras)
    with torch.no_grad():
        obs = model.observation_tokens(images, state)
        cache = model.start_stream(lang)
        for t in range(T):
            streamed = model.stream_step(cache, obs[:, t])
            window = obs[:, max(0, t - history + 1) : t + 1]
            full = model(lang, window, readouts="last")[:, 0]
            assert (streamed - full).abs().max() < 1e-5
            if t < history - 1:  # a short history equals an edge-padded window with its pad mask
                padded = torch.cat([window[:, :1].expand(-1, history - t - 1, -1, -1), window], dim=1)
                pad = torch.arange(history)[None].expand(2, -1) < history - t - 1
                assert (model(lang, padded, pad, readouts="last")[:, 0] - streamed).abs().max() < 1e-5


def test_streaming_writes_into_buffers_allocated_once_and_observing_equals_reading_out():
    """Steps that only observe and steps that read out share one ring buffer per layer: no per-step
    concatenation, and the readouts still equal the whole window's."""
    history, T = 3, 10
    model = make_model(history)
    images, state, lang = inputs(T=T)
    with torch.no_grad():
        obs = model.observation_tokens(images, state)
        cache = model.start_stream(lang)
        for t in range(T):
            if t % 3 == 1:
                model.stream_observe(cache, obs[:, t])
                continue
            streamed = model.stream_step(cache, obs[:, t])
            full = model(lang, obs[:, max(0, t - history + 1) : t + 1], readouts="last")[:, 0]
            assert (streamed - full).abs().max() < 1e-5, t
            if t == 0:
                buffers = [(k.data_ptr(), k.shape) for k, _ in cache.kv]
        assert [(k.data_ptr(), k.shape) for k, _ in cache.kv] == buffers
    n_prefix, n_obs = 1, obs.shape[2]
    assert cache.kv[0][0].shape[2] == n_prefix + history * n_obs
    assert len(model._stream_biases) <= 2 * history  # built once per pattern of slot ages, observe and read out


def test_streaming_biases_outlive_an_episode_but_not_a_change_of_weights():
    """The attention biases are kept across episodes (each costs a fraction of a millisecond to build), and
    rebuilt when the time-bias weights change in place (an optimiser step, load_state_dict) or are replaced."""
    history, T = 3, 7
    model = make_model(history)
    images, state, lang = inputs(T=T)

    def episode() -> None:
        cache = model.start_stream(lang)
        for t in range(T):
            streamed = model.stream_step(cache, obs[:, t])
            full = model(lang, obs[:, max(0, t - history + 1) : t + 1], readouts="last")[:, 0]
            torch.testing.assert_close(streamed, full, atol=1e-5, rtol=1e-5)

    with torch.no_grad():
        obs = model.observation_tokens(images, state)
        episode()
        kept = dict(model._stream_biases)
        episode()
        assert all(model._stream_biases[k] is v for k, v in kept.items())  # the second episode built none
        model.trunk.time_bias.add_(torch.randn_like(model.trunk.time_bias))  # as an optimiser step would
        episode()
        model.load_state_dict({**model.state_dict(), "trunk.time_bias": torch.randn(model.trunk.time_bias.shape)})
        episode()
        model.trunk.time_bias = torch.nn.Parameter(torch.randn_like(model.trunk.time_bias))
        episode()


def test_bfloat16_attention_on_a_cpu_is_softmax_attention_forward_and_backward():
    """Under bf16 autocast on a CPU `attention` takes torch's math backend (its fused kernel is slower there): the
    output and the gradients are softmax(q k^T / sqrt(d) + bias) v's, computed in float32, to bf16's precision,
    masked keys (-inf) included."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 5, 16, generator=g) for _ in range(3))
    bias = torch.randn(1, 2, 5, 5, generator=g).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        leaves = [t.clone().to(dtype).requires_grad_() for t in (q, k, v)]
        if dtype == torch.float32:  # the reference: the probabilities written out
            out = attention_probs(*leaves[:2], bias) @ leaves[2]
        else:
            out = attention(*leaves, bias.to(dtype))
        out.float().square().sum().backward()
        grads[dtype] = [out.float(), *(t.grad.float() for t in leaves)]
    for bf16, fp32 in zip(grads[torch.bfloat16], grads[torch.float32]):
        torch.testing.assert_close(bf16, fp32, atol=0.05 * fp32.abs().max().item(), rtol=0.05)


def test_loading_the_sentence_encoder_prints_nothing(capfd):
    """transformers' "Loading weights" bar was printed by every model command (once per eval worker)."""
    from transformers.utils import logging as hf_logging

    from vla.model.encoders import SentenceEncoder

    SentenceEncoder()(["open the drawer"])  # the model loads with the first text to encode
    assert capfd.readouterr().err == ""
    assert hf_logging.is_progress_bar_enabled()  # silenced for the load only


def test_an_instruction_past_the_token_limit_is_reported_once(caplog):
    """Issue 15.11: two long instructions that differ only past the limit embed alike; each is named once."""
    from vla.model import encoders

    encoder = encoders.SentenceEncoder()
    head = " ".join(["pick up the red block and place it carefully"] * 10)  # well past 64 tokens
    long_a, long_b, short = head + " on the left pad", head + " on the right pad", "open the drawer"
    with caplog.at_level("WARNING", logger="vla.model.encoders"):
        embedded = encoder([long_a, long_b, short])
        encoder.cache.clear()
        encoder([long_a, long_b, short])  # again, even uncached: no second warning
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all("cut to the sentence encoder's limit of 64" in w for w in warnings)
    assert all("tokens is cut" in w and "pick up the red block" in w for w in warnings)
    assert torch.equal(embedded[0], embedded[1])  # what the warning is about
    assert not torch.equal(embedded[0], embedded[2])


def test_sincos_positions_are_fixed_and_tell_every_patch_apart():
    """MAE's 2D sine-cosine positions: half the channels depend on the patch's row only, half on its column
    only; every patch differs; they are a buffer, not a weight, so no checkpoint carries them."""
    pos = sincos_2d(grid=4, dim=32).reshape(4, 4, 32)
    rows, cols = pos[..., :16], pos[..., 16:]
    assert torch.equal(rows, rows[:, :1].expand_as(rows)) and torch.equal(cols, cols[:1].expand_as(cols))
    flat = pos.reshape(16, 32)
    assert torch.cdist(flat, flat).add(torch.eye(16)).min() > 0.1
    encoder = VisionEncoder(32, 8, 32, 1, 16, 2, pos_embed="sincos")
    assert "pos" not in encoder.state_dict() and torch.equal(encoder.pos, sincos_2d(4, 32))
    assert "pos" in VisionEncoder(32, 8, 32, 1, 16, 2).state_dict()  # learned: a weight
    with pytest.raises(UserError, match="divisible by 4, got 30"):
        sincos_2d(4, 30)


def test_spatial_softmax_keypoint_is_where_its_feature_responds():
    """A keypoint is the softmax-weighted mean of the patch grid's (x, y) in [-1, 1], x to the right, y down."""
    keypoints = SpatialSoftmax(grid=4, dim=3, n_keypoints=1, out_dim=2)
    with torch.no_grad():
        keypoints.logits.weight.copy_(torch.tensor([[50.0, 0.0, 0.0]]))  # responds to feature 0
        keypoints.logits.bias.zero_()
        keypoints.proj.weight.copy_(torch.eye(2))
        keypoints.proj.bias.zero_()
    x = torch.zeros(2, 16, 3)
    x[0, 1 * 4 + 3, 0] = 1.0  # row 1, column 3
    x[1, 3 * 4 + 0, 0] = 1.0  # row 3, column 0
    torch.testing.assert_close(keypoints(x), torch.tensor([[1.0, -1 / 3], [-1.0, 1.0]]), atol=1e-4, rtol=0)


def test_conv_stem_reaches_the_patch_grid_and_stays_local():
    """Stride-2 3x3 convolutions down to the patch grid: a change inside one patch moves that patch's features
    and its neighbours' only (the receptive field of three such layers is 15 pixels)."""
    stem = conv_stem(8, 32).eval()
    image = torch.randn(1, 3, 64, 64)
    changed = image.clone()
    changed[..., 2 * 8 : 3 * 8, 5 * 8 : 6 * 8] += 1.0  # the patch at row 2, column 5
    with torch.no_grad():
        moved = (stem(changed) - stem(image)).abs().amax(1)[0] > 1e-6  # (8, 8)
    assert stem(image).shape == (1, 32, 8, 8) and moved[2, 5]
    rows, cols = torch.nonzero(moved, as_tuple=True)
    assert (rows - 2).abs().max() <= 1 and (cols - 5).abs().max() <= 1
    with pytest.raises(UserError, match="power of two >= 2, got 6"):
        conv_stem(6, 32)
