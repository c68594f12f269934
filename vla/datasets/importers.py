"""`vla data import-video` and `vla data import-image-text`: users' own clips and captioned images
into video and image-text stores (DESIGN section 3).

Frames are center-cropped to a square and resized to `image_size` (PIL, bilinear: antialiased when
shrinking) and stored under `observation.images.<camera>`; name the camera as your robot store's so a
pretrained vision encoder transfers. Video is decoded with PyAV and resampled to the store's one fps
by the frames' timestamps (pts x time_base): sample k, at time k / fps from the first frame, takes the
latest frame shown at or before that time, and the last frame is shown for its own duration (a GIF's
frames have their own). A faster source is thinned; a slower one is not invented between frames, its
frames are held (repeated) so that a step means 1 / fps seconds in every clip. Frames are turned
upright by the clip's display rotation first (phones store portrait clips sideways with a rotation).

Bad files (missing, undecodable, without frames, unreadable images) and captions that name no file
are reported by name with the reason and skipped, never dropped silently. The store is created only
once the first file decodes, and written one committed episode at a time, so a crash keeps every
episode written before it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from vla import keys
from vla.datasets.store import StoreError, TrajectoryStore
from vla.datasets.store_schema import schema_difference
from vla.errors import UserError
from vla.options import check_value

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mkv", ".mov")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TEXT_FIELDS = ("instruction", "caption", "text")  # a captions line's text, under the first of these it has
FILE_FIELDS = ("file", "image", "file_name")  # and the file it belongs to
CAMERA_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass
class ImportReport:
    out: str
    kind: str  # "video" or "image-text"
    imported: list[str] = field(default_factory=list)  # files that became episodes
    episodes: int = 0
    frames: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    held: list[str] = field(default_factory=list)  # clips slower than the store's fps: frames held, not invented

    def skip(self, name: str, reason: str) -> None:
        log.warning("skipped %s: %s", name, reason)
        self.skipped.append((name, reason))

    def summary(self) -> str:
        if self.kind == "video":
            what = f"imported {len(self.imported)} clips ({self.frames} frames"
            what += f", {self.episodes} episodes)" if self.episodes != len(self.imported) else ")"
        else:
            what = f"imported {len(self.imported)} images ({self.episodes} captions)"
        skipped = f", skipped {len(self.skipped)}"
        if self.skipped:
            skipped += ": " + ", ".join(f"{name} ({reason})" for name, reason in self.skipped)
        return f"{what}{skipped}; store {self.out}"


# --- argument checks: everything a user can get wrong, before anything is written ------------------
def _check_common(src: str | os.PathLike, image_size: int, camera: str) -> Path:
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory" if src.exists() else f"no directory {src}")
    check_value("--image-size", image_size, **keys.STORE_IMAGE_SIZES)
    if not CAMERA_NAME.match(camera):
        raise UserError(f"--camera must be a name of letters, digits, '_' or '-', got {camera!r}")
    return src


def _list_files(src: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """{path relative to `src` (posix): path} of the files under `src` with one of `suffixes`, sorted."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise UserError(f"no files ({', '.join('*' + s for s in suffixes)}) in {src}")
    return {p.relative_to(src).as_posix(): p for p in files}


def _store_target(out: str, kind: str, specs: dict[str, keys.Spec], append: bool, fps: float | None = None) -> None:
    """Refuse an existing `out` unless appending to a store of the same kind, schema (and fps)."""
    if not TrajectoryStore.exists(out):
        return
    if not append:
        raise StoreError(f"{out} already exists; pass --append to add to it, or choose another path")
    with TrajectoryStore.open(out) as store:
        if store.kind != kind:
            raise StoreError(f"{out} is a {store.kind} store; import {kind} into another path")
        difference = schema_difference(store.specs, specs)
        if difference:
            raise StoreError(f"{out} has another schema: {difference} (see --camera, --image-size)")
        if fps is not None and store.fps != fps:
            raise StoreError(f"{out} holds clips at {store.fps:g} fps; pass --fps {store.fps:g} to add to it")


class _LazyStore:
    """Opens (or creates) the store at the first episode, so an import that decodes nothing writes nothing."""

    def __init__(self, out: str, kind: str, specs: dict[str, keys.Spec], fps: float, attrs: dict):
        self.out, self.kind, self.specs, self.fps, self.attrs = out, kind, specs, fps, attrs
        self.store: TrajectoryStore | None = None

    def add(self, data: dict[str, np.ndarray], *, seed: int | None, **meta) -> int:
        """Append and commit one episode; `seed` None: the episode's index. Returns the index."""
        if self.store is None:
            if TrajectoryStore.exists(self.out):
                self.store = TrajectoryStore.open(self.out, mode="a")
            else:
                self.store = TrajectoryStore.create(self.out, self.specs, fps=self.fps, kind=self.kind,
                                                    extra_attrs={"import": self.attrs})  # fmt: skip
        seed = self.store.num_episodes if seed is None else seed
        return self.store.add_episode(data, seed=seed, **meta)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


# --- captions files --------------------------------------------------------------------------------
def _field(record: dict, names: tuple[str, ...]) -> str | None:
    for name in names:
        if isinstance(record.get(name), str) and record[name].strip():
            return record[name].strip()
    return None


def read_captions(path: str | os.PathLike) -> list[dict]:
    """Caption records [{"file", "text", "task"?}] from JSONL, a JSON list, or COCO-style JSON
    ({"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}), auto-detected.
    A malformed file or record is a `UserError` naming the line or record (nothing is written)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no captions file {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and "images" in whole and "annotations" in whole:
        return _coco_records(whole, path)
    if isinstance(whole, list):
        raw = list(enumerate(whole, 1))
        where = "record"
    else:
        raw, where = [], "line"
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(
                        f"{path} line {n} is not JSON ({e.msg}); expected JSONL, a JSON list or COCO JSON"
                    ) from None
    records = []
    for n, rec in raw:
        name = _field(rec, FILE_FIELDS) if isinstance(rec, dict) else None
        caption = _field(rec, TEXT_FIELDS) if isinstance(rec, dict) else None
        if name is None or caption is None:
            raise UserError(
                f"{path} {where} {n}: expected an object with a file ({'/'.join(FILE_FIELDS)}) and a text "
                f"({'/'.join(TEXT_FIELDS)}), got {json.dumps(rec)[:80]}"
            )
        records.append({"file": name, "text": caption, "task": _field(rec, ("task",))})
    return records


def _coco_records(coco: dict, path: Path) -> list[dict]:
    try:
        names = {img["id"]: img["file_name"] for img in coco["images"]}
        pairs = [(a["image_id"], a["caption"]) for a in coco["annotations"]]
    except (KeyError, TypeError) as e:
        need = "images[].id/file_name and annotations[].image_id/caption"
        raise UserError(f"{path}: COCO captions need {need} (missing {e})") from None
    records = []
    for n, (image_id, caption) in enumerate(pairs, 1):
        if not isinstance(caption, str) or not caption.strip():
            raise UserError(f"{path}: annotation {n} (image_id {image_id}) has no caption text")
        name = str(names[image_id]) if image_id in names else f"<image_id {image_id}>"
        records.append({"file": name, "text": caption.strip(), "task": None})
    return records


def _match_captions(records: list[dict], files: dict[str, Path], report: ImportReport) -> dict[str, list[dict]]:
    """{file: its caption records}. A record names a file by its path under DIR, or by its bare name
    when that is unique; records naming no file are reported and dropped."""
    by_name: dict[str, list[str]] = {}
    for rel in files:
        by_name.setdefault(Path(rel).name, []).append(rel)
    matched: dict[str, list[dict]] = {}
    for rec in records:
        name = Path(rec["file"]).as_posix()
        if name not in files:
            candidates = by_name.get(name, [])
            name = candidates[0] if len(candidates) == 1 else None
        if name is None:
            report.skip(rec["file"], "captioned, but no such file in the folder")
            continue
        matched.setdefault(name, []).append(rec)
    return matched


def _reason(e: Exception) -> str:
    """An exception as a short reason: FFmpeg's message without its error number and path."""
    return str(getattr(e, "strerror", None) or e).split(": '")[0]


# --- frames -------------------------------------------------------------------------------------------
def square_resize(image: Image.Image, size: int) -> np.ndarray:
    """Center-crop `image` to a square and resize it to (size, size): uint8 (size, size, 3) RGB."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8)


def upright(frame) -> Image.Image:
    """A decoded video frame as shown: its display rotation applied (a phone clip recorded upright is
    stored sideways with a display matrix; PyAV's `frame.rotation` is the counterclockwise angle)."""
    image = frame.to_image()
    angle = int(round(getattr(frame, "rotation", 0) or 0)) % 360
    if angle in _TRANSPOSE:
        return image.transpose(_TRANSPOSE[angle])
    return image.rotate(angle, expand=True) if angle else image


_TRANSPOSE = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}


def decode_video(path: Path, fps: float, size: int, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """(frames (T, size, size, 3) uint8 at `fps`, the source's frame rate); raises ValueError with the reason.

    Streams: sample k (time k / fps after the first frame) takes the latest frame shown at or before
    it; each frame is shown from its timestamp until the next one's, the last for its own duration (the
    stream's frame period where the file gives none), so samples run to the end of the last frame.
    Frames are turned upright by their display rotation; only sampled frames are converted."""
    import av

    rate_out = Fraction(fps).limit_denominator(10_000)
    try:
        container = av.open(str(path))
    except Exception as e:  # FFmpeg and the OS raise several types for a missing or foreign file
        raise ValueError(f"cannot open: {_reason(e)}") from None
    frames: list[np.ndarray] = []
    with container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        prev, prev_t, prev_image, t0, k, period = None, None, None, None, 0, 1 / Fraction(rate)
        full = lambda: max_frames is not None and len(frames) >= max_frames  # noqa: E731

        def emit_until(end: Fraction) -> None:  # the samples the previous frame covers, up to `end`
            nonlocal prev_image, k
            while t0 + k / rate_out < end and not full():
                prev_image = square_resize(upright(prev), size) if prev_image is None else prev_image
                frames.append(prev_image)
                k += 1

        try:
            for index, frame in enumerate(container.decode(stream)):
                t = Fraction(frame.pts) * frame.time_base if frame.pts is not None else Fraction(index) / rate
                if t0 is None:
                    t0 = t
                elif t <= prev_t:
                    continue  # a repeated timestamp: the first frame shown at that time stands
                if prev is not None:
                    emit_until(t)
                if full():
                    break
                duration = Fraction(frame.duration) * frame.time_base if frame.duration else None
                prev, prev_t, prev_image, period = frame, t, None, duration or 1 / Fraction(rate)
        except Exception as e:  # a truncated or corrupt stream: keep what decoded, if anything
            if prev is None:
                raise ValueError(f"does not decode: {_reason(e)}") from None
            log.warning("%s: decoding stopped after %d frames (%s); keeping those", path.name, index, e)
        if prev is None:
            raise ValueError("no frames")
        emit_until(prev_t + period)  # the last frame is shown for its duration
    return np.stack(frames), float(rate)


# --- the importers --------------------------------------------------------------------------------------
def import_video(
    src: str | os.PathLike,
    out: str,
    captions: str | os.PathLike | None = None,
    *,
    fps: float = 10.0,
    image_size: int = keys.IMAGE_SIZE,
    camera: str = "corner",
    max_frames: int | None = None,
    default_instruction: str | None = None,
    append: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Clips under `src` (*.mp4 *.webm *.gif *.mkv *.mov) into the video store `out`: one episode per
    caption line ({"file", "instruction", "task"?}, file relative to `src`), task the line's or else the
    file's stem, success True, seed the episode's index, source "video"."""
    from tqdm import tqdm

    src = _check_common(src, image_size, camera)
    if not 0 < fps <= 1000:
        raise UserError(f"--fps must be in (0, 1000], got {fps}")
    if max_frames is not None and max_frames < 1:
        raise UserError(f"--max-frames must be >= 1, got {max_frames}")
    if captions is None and not default_instruction:
        raise UserError("give --captions FILE.jsonl, or --default-instruction TEXT for every clip")
    files = _list_files(src, VIDEO_SUFFIXES)
    records = read_captions(captions) if captions is not None else []
    specs = {keys.image_key(camera): keys.image_spec(camera, image_size, f"imported video, {camera} camera")}
    _store_target(out, "video", specs, append, fps)
    report = ImportReport(out, "video")
    matched = _match_captions(records, files, report)
    default = [{"text": default_instruction, "task": None}] if default_instruction else []
    store = _LazyStore(out, "video", specs, fps, {"source": str(src), "fps": fps, "camera": camera})
    try:
        for name, path in tqdm(files.items(), unit="clip", disable=not progress, desc="import"):
            recs = matched.get(name, default)
            if not recs:
                report.skip(name, "no caption line and no --default-instruction")
                continue
            try:
                frames, source_fps = decode_video(path, fps, image_size, max_frames)
            except ValueError as e:
                report.skip(name, str(e))
                continue
            if source_fps < fps:
                report.held.append(name)
            for rec in recs:
                store.add({keys.image_key(camera): frames}, instruction=rec["text"], task=rec["task"] or path.stem,
                          success=True, seed=None, source="video")  # fmt: skip
                report.episodes += 1
                report.frames += len(frames)
            report.imported.append(name)
    finally:
        store.close()
    if not report.imported:
        raise UserError(f"no clip imported; {report.summary()}")
    return report


def read_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, 3) RGB; raises ValueError with the reason."""
    try:
        with Image.open(path) as image:
            return square_resize(image, size)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError... on a bad file
        raise ValueError(f"unreadable image: {_reason(e)}") from None


def import_image_text(
    src: str | os.PathLike,
    out: str,
    captions: str | os.PathLike,
    *,
    image_size: int = keys.IMAGE_SIZE,
    camera: str = "corner",
    append: bool = False,
    progress: bool = True,
) -> ImportReport:
    """Images under `src` (png, jpg, jpeg, webp, bmp) with their captions into the image-text store
    `out`: one one-frame episode per caption, task the image's path under `src`, seed the index of the
    image's first episode (its captions share it), success True, source "image-text"."""
    from tqdm import tqdm

    src = _check_common(src, image_size, camera)
    files = _list_files(src, IMAGE_SUFFIXES)
    records = read_captions(captions)
    specs = {keys.image_key(camera): keys.image_spec(camera, image_size, f"imported image, {camera} camera")}
    _store_target(out, "image-text", specs, append)
    report = ImportReport(out, "image-text")
    matched = _match_captions(records, files, report)
    store = _LazyStore(out, "image-text", specs, 0.0, {"source": str(src), "camera": camera})
    try:
        for name, path in tqdm(files.items(), unit="image", disable=not progress, desc="import"):
            if name not in matched:
                report.skip(name, "no caption")
                continue
            try:
                frame = read_image(path, image_size)[None]  # a one-frame episode: (1, S, S, 3)
            except ValueError as e:
                report.skip(name, str(e))
                continue
            seed = None
            for rec in matched[name]:
                index = store.add({keys.image_key(camera): frame}, instruction=rec["text"], task=name, success=True,
                                  seed=seed, source="image-text")  # fmt: skip
                seed = index if seed is None else seed
                report.episodes += 1
            report.frames += 1
            report.imported.append(name)
    finally:
        store.close()
    if not report.imported:
        raise UserError(f"no image imported; {report.summary()}")
    return report
