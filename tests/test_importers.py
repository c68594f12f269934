"""`vla data import-video` and `vla data import-image-text` on MP4, GIF, PNG and JPG files the tests write."""

import json

import av
import numpy as np
import pytest
from PIL import Image

from vla import keys
from vla.cli import main
from vla.datasets.sampler import WindowDataset
from vla.datasets.store import TrajectoryStore

CORNER = keys.image_key("corner")


def write_clip(path, frames: int, fps: int, width=96, height=72):
    """An H.264 clip of a white square moving right by 2 pixels a frame on black."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[26:46, 2 * i : 2 * i + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def clips(tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    write_clip(d / "push.mp4", frames=30, fps=30)  # 1 s at 30 fps: 10 frames at 10 fps
    write_clip(d / "slow.mp4", frames=10, fps=5)  # 2 s at 5 fps (the last frame too lasts 0.2 s): 20 frames
    write_clip(d / "uncaptioned.mp4", frames=5, fps=10)
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a video" * 50)
    gif = [Image.fromarray(np.full((40, 50, 3), 30 * i, np.uint8)) for i in range(6)]
    gif[0].save(d / "fade.gif", save_all=True, append_images=gif[1:], duration=100, loop=0)  # 6 frames, 10 fps
    lines = [
        {"file": "push.mp4", "instruction": "push the square right"},
        {"file": "slow.mp4", "instruction": "move slowly", "task": "slow-move"},
        {"file": "corrupt.mp4", "instruction": "never seen"},
        {"file": "fade.gif", "instruction": "fade in"},
        {"file": "gone.mp4", "instruction": "a clip that is not there"},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return d


def import_video(clips, out, *extra):
    return main(["data", "import-video", str(clips), "--out", str(out), "--captions",
                 str(clips.parent / "captions.jsonl"), "--fps", "10", "-q", *extra])  # fmt: skip


def test_import_video(clips, tmp_path, capsys, caplog):
    out = tmp_path / "video.zarr"
    assert import_video(clips, out) == 0
    printed = capsys.readouterr()
    assert "imported 3 clips" in printed.out
    assert "corrupt.mp4 (cannot open" in printed.out
    assert "skipped corrupt.mp4: cannot open" in caplog.text  # also logged as it happens
    assert "uncaptioned.mp4 (no caption line" in printed.out and "gone.mp4 (captioned, but no such file" in printed.out
    assert "frames held (not invented): slow.mp4" in printed.out

    store = TrajectoryStore.open(out)
    assert store.kind == "video" and store.fps == 10.0 and list(store.specs) == [CORNER]
    assert store.specs[CORNER].shape == (64, 64, 3)
    meta = [store.episode_meta(i) for i in range(store.num_episodes)]
    assert [m[keys.INSTRUCTION] for m in meta] == ["fade in", "push the square right", "move slowly"]  # sorted files
    assert [m[keys.TASK] for m in meta] == ["fade", "push", "slow-move"]
    assert [m[keys.SEED] for m in meta] == [0, 1, 2]
    assert all(m[keys.SOURCE] == "video" and m[keys.SUCCESS] for m in meta)
    lengths = np.diff(np.concatenate([[0], store.episode_ends]))
    for length, expected in zip(lengths, [6, 10, 20], strict=True):
        assert abs(length - expected) <= 1
    # The square moves 6 source pixels (3 frames at 30 fps) per stored step: its centre moves right every step.
    push = store.episode(1)[CORNER].astype(float).mean(axis=(1, 3))  # (T, W) column brightness
    centres = (push * np.arange(64)).sum(1) / push.sum(1)
    assert np.all(np.diff(centres) > 1)
    # The 5 fps clip is held: consecutive stored frames repeat in pairs.
    slow = store.episode(2)[CORNER].astype(int)
    assert np.abs(slow[1] - slow[0]).max() <= 2 and np.abs(slow[2] - slow[1]).max() > 20
    assert main(["data", "check", str(out)]) == 0


def test_import_video_camera_size_limit_and_append(clips, tmp_path, capsys):
    out = tmp_path / "static.zarr"
    args = ["--camera", "static", "--image-size", "32", "--max-frames", "4", "--default-instruction", "do it"]
    assert import_video(clips, out, *args) == 0
    store = TrajectoryStore.open(out)
    static = keys.image_key("static")
    assert list(store.specs) == [static] and store.specs[static].shape == (32, 32, 3)
    assert store.num_episodes == 4  # the uncaptioned clip takes the default instruction
    assert store.meta(keys.INSTRUCTION).tolist()[-1] == "do it"
    assert max(np.diff(np.concatenate([[0], store.episode_ends]))) == 4
    assert import_video(clips, out, *args) == 2  # an existing store needs --append
    assert "pass --append" in capsys.readouterr().err
    assert import_video(clips, out, *args, "--append") == 0
    assert TrajectoryStore.open(out).num_episodes == 8
    assert import_video(clips, out, "--append") == 2  # another schema (camera, size)
    assert "another schema: observation.images.corner is missing from the store" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fps", "0"], "--fps must be in (0, 1000], got 0.0"),
        (["--image-size", "8"], "--image-size must be a multiple of 8 in [16, 1024], got 8"),
        (["--camera", "a.b"], "--camera must be a name of letters, digits"),
        (["--max-frames", "0"], "--max-frames must be >= 1"),
    ],
)
def test_import_video_bad_arguments_write_nothing(clips, tmp_path, capsys, args, message):
    out = tmp_path / "bad.zarr"
    assert import_video(clips, out, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_nothing_importable_is_an_error_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "broken.webm").write_bytes(b"\x1aE\xdf\xa3 nonsense")
    out = tmp_path / "none.zarr"
    assert main(["data", "import-video", str(tmp_path / "only"), "--out", str(out), "--default-instruction", "x",
                 "-q"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no clip imported" in err and "broken.webm (" in err
    assert not out.exists()
    nowhere = tmp_path / "nowhere"
    assert main(["data", "import-video", str(nowhere), "--out", str(out), "--default-instruction", "x"]) == 2
    assert "no directory" in capsys.readouterr().err
    bad_captions = tmp_path / "bad.jsonl"
    bad_captions.write_text('{"file": "a.mp4", "instruction": "ok"}\n{not json\n')
    only = tmp_path / "only"
    assert main(["data", "import-video", str(only), "--out", str(out), "--captions", str(bad_captions)]) == 2
    assert "bad.jsonl line 2 is not JSON" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def images(tmp_path):
    d = tmp_path / "images"
    (d / "more").mkdir(parents=True)
    halves = np.zeros((50, 100, 3), np.uint8)  # wide: the centre crop keeps columns 25..74
    halves[:, :50] = (255, 0, 0)
    halves[:, 50:] = (0, 0, 255)
    Image.fromarray(halves).save(d / "halves.png")
    Image.fromarray(np.full((80, 40, 3), (0, 200, 0), np.uint8)).save(d / "green.jpg")
    Image.fromarray(np.full((30, 30, 4), 200, np.uint8)).save(d / "more" / "grey.png")  # RGBA
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"nonsense" * 10)
    return d


def test_import_image_text_jsonl(images, tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    lines = [
        {"file": "halves.png", "caption": "red on the left, blue on the right"},
        {"image": "halves.png", "text": "two colours side by side"},
        {"file": "green.jpg", "caption": "a green field"},
        {"file": "broken.png", "caption": "never read"},
        {"file": "lost.png", "caption": "no such image"},
    ]
    captions.write_text("\n".join(json.dumps(line) for line in lines))
    out = tmp_path / "pairs.zarr"
    assert main(["data", "import-image-text", str(images), "--out", str(out), "--captions", str(captions), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "imported 2 images (3 captions)" in printed
    assert "broken.png (unreadable image" in printed and "lost.png (captioned, but no such file" in printed
    assert "more/grey.png (no caption)" in printed
    store = TrajectoryStore.open(out)
    assert store.kind == "image-text" and list(store.specs) == [CORNER] and store.num_steps == store.num_episodes == 3
    meta = [store.episode_meta(i) for i in range(3)]
    assert [m[keys.INSTRUCTION] for m in meta] == ["a green field", "red on the left, blue on the right",
                                                   "two colours side by side"]  # fmt: skip
    assert [m[keys.TASK] for m in meta] == ["green.jpg", "halves.png", "halves.png"]
    assert [m[keys.SEED] for m in meta] == [0, 1, 1] and {m[keys.SOURCE] for m in meta} == {"image-text"}
    halves = store.episode(1)[CORNER][0].astype(int)
    assert halves.shape == (64, 64, 3)
    assert (halves[:, :28, 0] > 200).all() and (halves[:, :28, 2] < 50).all()  # left half red
    assert (halves[:, 36:, 2] > 200).all() and (halves[:, 36:, 0] < 50).all()  # right half blue
    np.testing.assert_array_equal(store.episode(2)[CORNER], store.episode(1)[CORNER])  # one frame per caption
    assert main(["data", "check", str(out)]) == 0
    window = WindowDataset(store)[0]  # no scene facts behind these captions: no phrase grounding pair
    assert window[keys.CAPTION] == "a green field" and keys.REFERRING_EXPRESSION not in window


def test_import_image_text_coco(images, tmp_path, capsys):
    coco = {
        "images": [{"id": 7, "file_name": "grey.png"}, {"id": 8, "file_name": "green.jpg"}],
        "annotations": [{"image_id": 7, "caption": "a grey square"}, {"image_id": 8, "caption": "green"},
                        {"image_id": 8, "caption": "all green"}, {"image_id": 99, "caption": "orphan"}],
    }  # fmt: skip
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    out = tmp_path / "coco.zarr"
    assert main(["data", "import-image-text", str(images), "--out", str(out), "--captions",
                 str(tmp_path / "coco.json"), "--image-size", "32", "--camera", "static", "-q"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "imported 2 images (3 captions)" in printed and "<image_id 99> (captioned, but no such file" in printed
    store = TrajectoryStore.open(out)
    assert list(store.specs) == [keys.image_key("static")]
    assert sorted(store.meta(keys.INSTRUCTION).tolist()) == ["a grey square", "all green", "green"]
    grey = store.episode(store.meta(keys.TASK).tolist().index("more/grey.png"))[keys.image_key("static")]
    assert grey.shape == (1, 32, 32, 3) and abs(int(grey.mean()) - 200) <= 2  # RGBA became RGB
    assert main(["data", "check", str(out)]) == 0


# --- timing and orientation of decoded clips (issue 15.13) ------------------------------------------------
def _gif(path, durations_ms):
    """Frame i is a flat grey of 40 * (i + 1), shown for durations_ms[i]."""
    frames = [Image.fromarray(np.full((16, 16, 3), 40 * (i + 1), np.uint8)) for i in range(len(durations_ms))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=list(durations_ms), loop=0)


@pytest.mark.parametrize(
    "durations, shown",
    [
        ([100, 300, 50, 150], [0, 1, 1, 1, 2, 3]),  # 600 ms at 10 fps: samples at 0, 100, ..., 500 ms
        ([500, 500, 500], [0] * 5 + [1] * 5 + [2] * 5),  # the last frame holds for its own 500 ms too
        ([100, 100], [0, 1]),
    ],
)
def test_every_frame_lasts_its_duration_the_last_one_too(tmp_path, durations, shown):
    from vla.datasets.importers import decode_video

    _gif(tmp_path / "clip.gif", durations)
    frames, _ = decode_video(tmp_path / "clip.gif", fps=10, size=16)
    assert [int(f[8, 8, 0]) for f in frames] == [40 * (i + 1) for i in shown]


def _rotated_clip(path, degrees: int):
    """A 64x32 landscape clip whose top-left quadrant is white, stored with a display rotation of
    `degrees` (counterclockwise, as PyAV reads it back from `frame.rotation`)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(degrees)
        image = np.zeros((32, 64, 3), np.uint8)
        image[:16, :32] = 255
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize(
    "degrees, bright",
    [
        (0, "top-left"),
        (-90, "top-right"),  # a phone's portrait clip: shown turned 90 degrees clockwise
        (90, "bottom-left"),
        (180, "bottom-right"),
    ],
)
def test_a_clip_is_imported_as_it_is_displayed(tmp_path, degrees, bright):
    """Shown upright (display rotation applied), centre-cropped to a square, then resized: the white
    quadrant lands where a player shows it."""
    from vla.datasets.importers import decode_video

    _rotated_clip(tmp_path / "clip.mp4", degrees)
    frames, _ = decode_video(tmp_path / "clip.mp4", fps=10, size=16)
    frame = frames[0].astype(float).mean(axis=2)
    quadrants = {"top-left": frame[:8, :8], "top-right": frame[:8, 8:], "bottom-left": frame[8:, :8],
                 "bottom-right": frame[8:, 8:]}  # fmt: skip
    means = {name: q.mean() for name, q in quadrants.items()}
    assert means[bright] > 200 and all(m < 60 for name, m in means.items() if name != bright), means
