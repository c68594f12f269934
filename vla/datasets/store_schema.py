"""What may be written to a trajectory store: values checked against a key's spec (`conform`), and two
schemas compared field by field (`schema_difference`). Nothing here touches zarr."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vla import keys
from vla.errors import UserError


class StoreError(UserError):
    """A store that is missing, corrupt, of another format or schema, or locked by another writer."""


def conform(key: str, spec: keys.Spec, values, *, steps: bool = True) -> np.ndarray:
    """`values` for `key` as the spec's dtype, or a `StoreError` naming the key, what was given and what
    the spec says. `steps`: values carry a leading time axis (T, *shape); else one step (*shape).

    Integers are accepted for an integer key when every value fits its dtype; floats never are (frames in
    [0, 1] would store as 0). Floats and integers are accepted for a float key when every value is finite
    after conversion. Nothing else converts."""
    arr = np.asarray(values)
    per_step = tuple(arr.shape[1:] if steps else arr.shape)
    if (steps and arr.ndim == 0) or per_step != tuple(spec.shape):
        what = f"per-step shape {per_step}" if steps and arr.ndim else f"shape {arr.shape}"
        raise StoreError(f"{key} has {what}; the store's spec says {tuple(spec.shape)} ({spec.description})")
    want = np.dtype(spec.dtype)
    given = f"{key} given as {arr.dtype}"
    says = f"the store's spec says {want} ({spec.units})"
    if want.kind in "iu":
        if arr.dtype.kind not in "iu":
            hint = " (scale and round frames in [0, 1] to 0..255 first)" if keys.is_image_key(key) else ""
            raise StoreError(f"{given}{_value_range(arr)}; {says}{hint}")
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise StoreError(f"{given}{_value_range(arr)}, outside {want}'s {info.min}..{info.max}; {says}")
        return arr.astype(want, copy=False)
    if want.kind == "f":
        if arr.dtype.kind not in "fiu":
            raise StoreError(f"{given}; {says}")
        with np.errstate(over="ignore"):
            out = arr.astype(want, copy=False)
        if not np.all(np.isfinite(out)):
            bad = "non-finite" if not np.all(np.isfinite(arr)) else f"beyond {want}'s range"
            raise StoreError(f"{given} with {bad} values; {says}, finite")
        return out
    raise StoreError(f"{key}: the store's spec dtype {want} is not one vla writes")


def _value_range(arr: np.ndarray) -> str:
    if not arr.size or arr.dtype.kind not in "fiub":
        return ""
    return f" (values {arr.min():.4g}..{arr.max():.4g})"


def schema_difference(stored: Mapping[str, keys.Spec], wanted: Mapping[str, keys.Spec]) -> str | None:
    """What differs between two schemas, named field by field (`action: description 'a' in the store,
    'b' here`), or None when they are equal."""
    diffs = []
    for key in sorted(set(stored) | set(wanted)):
        if key not in stored or key not in wanted:
            diffs.append(f"{key} is {'missing from the store' if key not in stored else 'not written here'}")
            continue
        have, want = stored[key], wanted[key]
        fields = [
            f"{name} {getattr(have, name)!r} in the store, {getattr(want, name)!r} here"
            for name in ("dtype", "shape", "units", "description")
            if getattr(have, name) != getattr(want, name)
        ]
        if fields:
            diffs.append(f"{key}: " + "; ".join(fields))
    return ". ".join(diffs) or None
