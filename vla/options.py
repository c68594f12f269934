"""Command options as dataclass fields: each default, bound and help text written once, on its field.

    @dataclass
    class EvalConfig:
        policy: str = option(help="zero | expert | a checkpoint directory")  # no default: a required flag
        episodes: int = option(10, min=1, help="episodes per task")
        baseline: str | None = option(None, choices=("zero", "expert"), help="also run this policy")

        def __post_init__(self):
            check_fields(self)  # types, bounds and choices from the fields, for the CLI and for Python callers

    add_flags(parser, EvalConfig)      # --policy (required), --episodes (default: 10), --baseline {zero,expert}
    cfg = from_args(EvalConfig, args)  # the parsed strings converted to the field types, then checked

A field `max_steps` becomes the flag `--max-steps`; a `bool` field is a switch (`store_true`, or
`--x/--no-x` when it defaults to True); an `X | None` field takes an X or keeps None. argparse keeps
the values as strings and `from_args` converts them, so every bad value, whatever its kind, is a
`UserError`: one line naming the flag, the value and what is valid, which the CLI prints with exit 2:

    --episodes must be >= 1, got 0        --hz must be in (0, 1000], got 0.0
    --episodes must be int, got 'ten'     unknown --mode 'fast'; valid: sync, async
    --image-size must be a multiple of 8 in [16, 1024], got 20
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import numbers
import types
import typing
from dataclasses import MISSING

from vla.errors import UserError, choice_error

CHECKS = ("min", "gt", "max", "multiple_of", "choices")  # the checks a field's metadata may carry


def option(default=MISSING, *, help: str, min=None, gt=None, max=None, multiple_of=None, choices=None,
           metavar: str | None = None):  # fmt: skip
    """A dataclass field that is also a command-line flag. `min`/`max` are inclusive bounds, `gt` an
    exclusive lower bound, `multiple_of` what an int must be a multiple of, `choices` the valid values;
    no `default` makes the flag required."""
    choices = tuple(choices) if choices else None
    meta = dict(help=help, min=min, gt=gt, max=max, multiple_of=multiple_of, choices=choices, metavar=metavar)
    if isinstance(default, list):  # a list field (its bounds apply to each item): a fresh list per instance
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    """`max_steps` -> `--max-steps`."""
    return "--" + name.replace("_", "-")


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _value_type(hint) -> tuple[type, bool]:
    """(the type of a value, whether None is allowed) for a field annotation: `int` -> (int, False),
    `float | None` -> (float, True)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return inner, True
    return hint, False


# --- flags -----------------------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (except `skip`): default, help, metavar from the field."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, _ = _value_type(_hints(cls)[f.name])
        text = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help texts
        if kind is bool:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            parser.add_argument(flag(f.name), action=action, default=f.default, help=text)
            continue
        if kind not in (str, int, float):
            raise TypeError(f"{cls.__name__}.{f.name}: {kind} fields make no flag")
        choices = f.metadata.get("choices")
        metavar = f.metadata.get("metavar") or ("{" + ",".join(map(str, choices)) + "}" if choices else None)
        required = f.default is MISSING and f.default_factory is MISSING
        default = None if f.default is MISSING else f.default
        parser.add_argument(flag(f.name), required=required, default=default, metavar=metavar, help=text)


def from_args(cls, args: argparse.Namespace, **given):
    """An instance of `cls` from the flags `add_flags` made (strings converted to the field types and
    checked by the class's `check_fields`); fields in `given` take those values instead."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        if f.name not in values and hasattr(args, f.name):
            values[f.name] = _parse(f.name, _hints(cls)[f.name], getattr(args, f.name))
    return cls(**values)


def _parse(name: str, hint, value):
    kind, _ = _value_type(hint)
    if not isinstance(value, str) or kind is str:
        return value  # a default, or a string field
    try:
        return kind(value)
    except ValueError:
        raise UserError(f"{flag(name)} must be {kind.__name__}, got {value!r}") from None


# --- checks ----------------------------------------------------------------------------------------
def check_fields(obj, section: str | None = None) -> None:
    """Check every field of dataclass instance `obj` against its type and its metadata's bounds. Errors
    name the field as its flag (`--max-steps`), or as a config key (`policy.history`) given a `section`."""
    name = flag if section is None else (lambda field: f"{section}.{field}")
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind, optional = _value_type(_hints(type(obj))[f.name])
        if value is None and optional:
            continue
        bounds = {k: f.metadata.get(k) for k in CHECKS}
        if typing.get_origin(kind) is list:  # a list of numbers or strings: each item checked like a field
            (item,) = typing.get_args(kind)
            if item not in (int, float, str):
                continue  # a list of sections (data.stores) is checked by their own dataclass
            if not isinstance(value, list):
                raise UserError(f"{name(f.name)} must be a list of {item.__name__}, got {value!r}")
            for v in value:
                _check_type(name(f.name), v, item)
                check_value(name(f.name), v, **bounds)
            continue
        _check_type(name(f.name), value, kind)
        check_value(name(f.name), value, **bounds)


def _check_type(name: str, value, kind) -> None:
    number = numbers.Integral if kind is int else numbers.Real if kind is float else None
    if number is not None and (isinstance(value, bool) or not isinstance(value, number)):
        raise UserError(f"{name} must be {kind.__name__}, got {value!r}")


def check_value(name: str, value, *, min=None, gt=None, max=None, multiple_of=None, choices=None) -> None:
    """Raise the one-line UserError for a `value` of flag `name` outside its bounds or choices."""
    if choices is not None and value not in choices:
        raise choice_error(name, value, choices)
    outside = (min is not None and value < min) or (gt is not None and value <= gt) or (max is not None and value > max)
    if outside or (multiple_of is not None and value % multiple_of):
        valid = " ".join(filter(None, [multiple_of and f"a multiple of {multiple_of}", _valid_range(min, gt, max)]))
        raise UserError(f"{name} must be {valid}, got {value}")


def _valid_range(min, gt, max) -> str:
    """`>= 1`, `> 0`, `<= 9`, `in [16, 1024]` or `in (0, 1000]`."""
    if min is None and gt is None and max is None:
        return ""
    low = f"[{min}" if min is not None else f"({gt}" if gt is not None else None
    if low and max is not None:
        return f"in {low}, {max}]"
    if max is not None:
        return f"<= {max}"
    return f">= {min}" if min is not None else f"> {gt}"


# --- help ------------------------------------------------------------------------------------------
class HelpFormatter(argparse.HelpFormatter):
    """Shows each flag's default after its help, unless the help already speaks of its default or
    there is nothing to show (no default, an off switch, a required flag, a positional argument)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default is argparse.SUPPRESS or default == []
        if nothing or action.required or not action.option_strings or "default" in text:
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with `HelpFormatter`, for itself and (through `add_subparsers`) its subcommands."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
