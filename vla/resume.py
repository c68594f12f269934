"""What a resumed run trains with: its own saved config, with the settings a resume may change (how far it
goes, where it logs and saves, the device) applied and every other difference refused by name."""

from __future__ import annotations

import logging
from pathlib import Path

from vla import checkpoint
from vla.config import Config, field_keys, get_field, set_field
from vla.errors import UserError

log = logging.getLogger(__name__)

# What a resume may change: how far the run goes, the directory it continues (a copy of a run resumes as
# itself), what is logged, saved and evaluated on the way, the device, and how many processes load the
# data (the batches do not depend on it); whether the pass is compiled (`train.compile`: the same arithmetic,
# rounded within float tolerance, like another device). Everything else decides the weights and is the run's own.
RESUME_MAY_CHANGE = ("train.steps", "train.out", "train.log_every", "train.val_every", "train.save_every",
                     "train.device", "train.compile", "data.num_workers")  # fmt: skip


def _may_change(key: str) -> bool:
    return key in RESUME_MAY_CHANGE or key.startswith("train.eval.")


def _same(key: str, new, old) -> bool:
    """Whether a setting is unchanged; the run's stores reached by another local path (a symlink, a relative
    path) are the same stores."""
    if key == "data.stores" and new != old and len(new) == len(old):
        return all(n.weight == o.weight and _real(n.path) == _real(o.path) for n, o in zip(new, old))
    return new == old


def _real(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def prepare(cfg: Config, resume: bool, given: list[str] | None = None) -> Config:
    """The config a run trains with. A new run: `cfg`, in a directory without a checkpoint. A resume: the
    run's own config from the checkpoint in `cfg.train.out` (the directory given, which may be a copy),
    with each setting in `given` (dotted keys the user set; None: every field of `cfg`) that differs from
    the run's applied if a resume may change it (`RESUME_MAY_CHANGE`, `train.eval.*`) and refused, by
    name, otherwise."""
    out = Path(cfg.train.out)
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UserError(f"train.out {out}: {existing} is a file; set train.out to a directory")
    if not resume:
        if (out / checkpoint.CHECKPOINT).exists():
            raise UserError(f"{out} already has a checkpoint; pass --resume to continue it or set train.out elsewhere")
        return cfg
    saved = checkpoint.load_run_config(out)
    changes = {}
    for key in field_keys() if given is None else given:
        new, old = get_field(cfg, key), get_field(saved, key)
        filled_by_training = key == "policy.features" or (key == "policy.gripper" and new == "auto")
        if not _same(key, new, old) and not filled_by_training and key != "train.out":
            changes[key] = (old, new)
    refused = [f"{k} ({old!r} in the run, {new!r} here)" for k, (old, new) in changes.items() if not _may_change(k)]
    if refused:
        raise UserError(f"--resume continues {out} as it was trained, so it cannot change {'; '.join(refused)}: leave "
                        f"{'it' if len(refused) == 1 else 'them'} out, or start a new run (train.out elsewhere, "
                        "--init-from to start from its weights)")  # fmt: skip
    for key, (old, new) in changes.items():
        set_field(saved, key, new)
        log.info("resume: %s %r -> %r", key, old, new)
    if saved.train.out != cfg.train.out:
        log.info("resume: continuing %s (its config names %s as the run directory)", cfg.train.out, saved.train.out)
        saved.train.out = cfg.train.out
    return saved
