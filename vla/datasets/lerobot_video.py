"""Video for LeRobot datasets with PyAV: frames decoded by timestamp, episodes encoded back to back.

Decoding follows LeRobot's reading (v0.4.4 `video_utils.decode_video_frames`): the frame for a query time
is the decoded frame whose presentation time (pts x time_base) is nearest; LeRobot demands it within
`tolerance_s` (1e-4 s by default), here within half a frame period, and a query past the end of the video
is an error naming the video, the time asked for and where the video ends.

Encoding follows LeRobot's writer (`encode_video_frames`): one stream at the dataset's fps, GOP 2, and
for the default codec `av1` libsvtav1 in yuv420p at crf 30, preset 12 (SVT maps it to its fastest).
`h264` is libx264 yuv420p at the same crf. `lossless` is libx264rgb in RGB at qp 0: every pixel decodes
exactly, and LeRobot's pyav reader decodes it like any H.264 stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from vla.errors import UserError


@dataclass(frozen=True)
class Codec:
    encoder: str  # the FFmpeg encoder PyAV opens
    pix_fmt: str
    options: dict  # encoder options; "{crf}" is replaced by the chosen crf
    name: str  # the codec's name in info.json's video.codec (what the decoder reports)


CODECS = {
    "av1": Codec("libsvtav1", "yuv420p", {"g": "2", "crf": "{crf}", "preset": "12"}, "av1"),
    "h264": Codec("libx264", "yuv420p", {"g": "2", "crf": "{crf}"}, "h264"),
    "lossless": Codec("libx264rgb", "rgb24", {"g": "2", "qp": "0"}, "h264"),
}
DEFAULT_CODEC, DEFAULT_CRF = "av1", 30  # LeRobot's defaults


class VideoWriter:
    """One camera's video file: frames appended episode after episode, pts = frame number at 1/fps.

    with VideoWriter(path, fps, "av1") as w: w.add(frames)   # frames (T, H, W, 3) uint8 RGB
    """

    def __init__(self, path: Path, fps: int, codec: str = DEFAULT_CODEC, crf: int = DEFAULT_CRF):
        import av

        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise (1: errors)
        self.codec = CODECS[codec]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.frames = path, fps, 0
        self.container = av.open(str(path), "w")
        options = {k: v.format(crf=crf) for k, v in self.codec.options.items()}
        self.stream = self.container.add_stream(self.codec.encoder, rate=fps, options=options)
        self.stream.pix_fmt = self.codec.pix_fmt
        self.stream.time_base = Fraction(1, fps)
        self.size: tuple[int, int] | None = None

    def add(self, frames: np.ndarray) -> None:
        import av

        if self.size is None:
            self.size = frames.shape[1:3]
            self.stream.height, self.stream.width = self.size
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            self.container.mux(self.stream.encode(frame))
            self.frames += 1

    def close(self) -> None:
        if self.container is not None:
            if self.size is not None:
                self.container.mux(self.stream.encode())
            self.container.close()
            self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def video_end(path: Path) -> float:
    """Seconds at which the video's last frame ends (stream duration, else the container's)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None:
                return float(stream.duration * stream.time_base)
            return float(container.duration or 0) / av.time_base
    except Exception as e:  # FFmpeg raises several types for a missing or foreign file
        raise UserError(f"cannot open video {path} ({e})") from None


def stream_info(path: Path) -> dict:
    """info.json's `info` of a video feature, as LeRobot's `get_video_info` describes a stream."""
    import av

    with av.open(str(path)) as container:
        s = container.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": s.pix_fmt, "video.is_depth_map": False, "video.fps": int(s.base_rate or 0),
                "video.channels": 3, "has_audio": bool(container.streams.audio)}  # fmt: skip


def decode_at(path: Path, times: np.ndarray, fps: float, convert) -> list:
    """The frames of `path` nearest to each of `times` (s, ascending), each passed through `convert`
    (a PyAV VideoFrame -> what is kept, e.g. a resized array). Frames before the first time are skipped
    undecoded past a seek to the keyframe before it. Raises `UserError` when a time has no frame within
    half a period (1 / (2 fps)): the video is shorter than its timestamps, or out of step with them."""
    import av

    tol = 0.5 / fps
    kept_t, kept = [], []
    try:
        container = av.open(str(path))
    except Exception as e:
        raise UserError(f"cannot open video {path} ({e})") from None
    with container:
        stream = container.streams.video[0]
        if times[0] > tol:
            container.seek(int((times[0] - tol) / stream.time_base), stream=stream, backward=True)
        for frame in container.decode(stream):
            t = float(frame.pts * frame.time_base)
            if t < times[0] - tol:
                continue
            kept_t.append(t)
            kept.append(convert(frame))
            if t >= times[-1]:
                break
    if not kept:
        raise UserError(f"{path} has no frame at {times[0]:.4f} s or after (it ends at {video_end(path):.4f} s)")
    kept_t = np.asarray(kept_t)
    nearest = np.abs(times[:, None] - kept_t[None, :]).argmin(1)
    off = np.abs(kept_t[nearest] - times)
    if (off > tol).any():
        bad = int(np.argmax(off > tol))
        raise UserError(
            f"{path} has no frame at {times[bad]:.4f} s (nearest {kept_t[nearest[bad]]:.4f} s; the "
            f"video ends at {video_end(path):.4f} s): shorter than its timestamps or out of step with them"
        )
    return [kept[i] for i in nearest]
