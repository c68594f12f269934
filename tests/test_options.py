"""Command options generated from dataclasses (vla.options): defaults written once, one-line errors."""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from vla import keys
from vla.cli import build_parser, main
from vla.collect import CollectConfig
from vla.errors import UserError
from vla.eval_config import EvalConfig
from vla.options import add_flags, check_fields, from_args, option
from vla.robot.cli import ControlConfig
from vla.robot.loop import LoopConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Toy:
    name: str = option(help="required: no default")
    count: int = option(3, min=1, max=9, help="a bounded int")
    rate: float | None = option(None, gt=0, help="optional, above 0")
    mode: str = option("a", choices=("a", "b"), help="a choice")
    fast: bool = option(False, help="a switch")
    safe: bool = option(True, help="a switch that is on: --no-safe turns it off")
    share: float = option(0.5, min=0, max=1, help="100% is 1")  # a '%' in help must not break --help

    def __post_init__(self):
        check_fields(self)


def toy(argv: list[str]) -> Toy:
    parser = argparse.ArgumentParser()
    add_flags(parser, Toy)
    return from_args(Toy, parser.parse_args(argv))


def test_flags_carry_the_field_defaults_and_convert_types():
    assert toy(["--name", "x"]) == Toy("x")
    t = toy(["--name", "x", "--count", "4", "--rate", "2.5", "--mode", "b", "--fast", "--no-safe", "--share", "1"])
    assert t == Toy("x", count=4, rate=2.5, mode="b", fast=True, safe=False, share=1.0)
    assert type(t.count) is int and type(t.rate) is float
    with pytest.raises(SystemExit):  # --name has no default: a required flag
        toy([])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--count", "0"], "--count must be in [1, 9], got 0"),
        (["--count", "10"], "--count must be in [1, 9], got 10"),
        (["--rate", "0"], "--rate must be > 0, got 0.0"),
        (["--mode", "c"], "unknown --mode 'c'; valid: a, b"),
        (["--count", "many"], "--count must be int, got 'many'"),
        (["--rate", "fast"], "--rate must be float, got 'fast'"),
    ],
)
def test_bad_values_name_the_flag_the_value_and_the_valid_ones(argv, message):
    with pytest.raises(UserError) as e:
        toy(["--name", "x", *argv])
    assert str(e.value) == message


def test_python_callers_get_the_same_checks():
    with pytest.raises(UserError, match=r"^--count must be int, got '3'$"):
        Toy("x", count="3")
    with pytest.raises(UserError, match=r"^--episodes must be >= 1, got 0$"):
        EvalConfig("zero", episodes=0)
    with pytest.raises(UserError, match=r"^--hz must be in \(0, 1000\], got 2000$"):
        LoopConfig("go", hz=2000)


# --- the commands --------------------------------------------------------------------------------
def _subparser(command: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


@pytest.mark.parametrize(
    "command, classes", [("collect", [CollectConfig]), ("eval", [EvalConfig]), ("control", [ControlConfig, LoopConfig])]
)
def test_every_field_is_a_flag_with_the_field_default(command, classes):
    flags = {a.dest: a for a in _subparser(command)._actions}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if cls is LoopConfig and f.name == "instruction":
                continue  # `--instruction` is ControlConfig's (the robot may supply one)
            action = flags[f.name]
            assert action.option_strings == ["--" + f.name.replace("_", "-")]
            if f.default is dataclasses.MISSING:
                assert action.required
            else:
                assert action.default == f.default and not action.required


def test_the_parsed_defaults_build_the_default_configs():
    args = build_parser().parse_args(["collect", "--out", "x.zarr"])
    assert from_args(CollectConfig, args) == CollectConfig(out="x.zarr")
    assert CollectConfig(out="x").image_size == keys.IMAGE_SIZE
    args = build_parser().parse_args(["eval", "--policy", "zero"])
    assert from_args(EvalConfig, args) == EvalConfig("zero")
    args = build_parser().parse_args(["control", "--policy", "zero"])
    assert from_args(ControlConfig, args) == ControlConfig("zero")
    assert from_args(LoopConfig, args, instruction="go") == LoopConfig("go")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["collect", "--out", "{tmp}/a.zarr", "--workers", "0"], "--workers must be >= 1, got 0"),
        (
            ["collect", "--out", "{tmp}/a.zarr", "--image-size", "8"],
            "--image-size must be a multiple of 8 in [16, 1024]",
        ),
        # a store `vla train` could not learn from (frames of whole patches) is refused when it would be collected
        (
            ["collect", "--out", "{tmp}/a.zarr", "--image-size", "20"],
            "--image-size must be a multiple of 8 in [16, 1024], got 20",
        ),
        (
            ["data", "import-video", "{tmp}", "--out", "{tmp}/a.zarr", "--image-size", "20"],
            "--image-size must be a multiple of 8 in [16, 1024], got 20",
        ),
        (["collect", "--out", "{tmp}/a.zarr", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["collect", "--out", "{tmp}/a.zarr", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["collect", "--out", "{tmp}/a.zarr", "--steps-after-success", "-1"], "--steps-after-success must be >= 0"),
        (["eval", "--policy", "zero", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["eval", "--policy", "zero", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["foresight", "--policy", "p", "--out", "{tmp}/f", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["foresight", "--policy", "p", "--out", "{tmp}/f", "--episode", "-1"], "--episode must be >= 0, got -1"),
        (["control", "--policy", "zero", "--seed", "-1"], "--seed must be >= 0, got -1"),
        (["control", "--policy", "zero", "--temporal-ensemble", "-1"], "--temporal-ensemble must be >= 0, got -1.0"),
        (["collect", "--out", "{tmp}/a.zarr", "--kind", "audio"], "unknown --kind 'audio'; valid: robot, video,"),
        (["collect", "--out", "{tmp}/a.zarr", "--episodes-per-task", "two"], "--episodes-per-task must be int, got"),
        (["eval", "--policy", "zero", "--videos", "-1"], "--videos must be >= 0, got -1"),
        (["eval", "--policy", "zero", "--image-size", "2048"], "--image-size must be in [16, 1024], got 2048"),
        (["eval", "--policy", "zero", "--baseline", "random"], "unknown --baseline 'random'; valid: zero, expert"),
        (["eval", "--policy", "zero", "--episodes", "1.5"], "--episodes must be int, got '1.5'"),
        (["control", "--policy", "zero", "--hz", "0"], "--hz must be in (0, 1000], got 0.0"),
        (["control", "--policy", "zero", "--duration", "-1"], "--duration must be > 0, got -1.0"),
        (["control", "--policy", "zero", "--n-action-steps", "0"], "--n-action-steps must be >= 1, got 0"),
        (["control", "--policy", "zero", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["control", "--policy", "zero", "--mode", "fast"], "unknown --mode 'fast'; valid: sync, async"),
        (["control", "--policy", "zero", "--success", "maybe"], "unknown --success 'maybe'; valid: yes, no"),
        (["control", "--policy", "zero", "--hz", "fast"], "--hz must be float, got 'fast'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"vla {argv[0]}: error: ") and message in captured.err
    assert captured.err.count("\n") == 1
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    "command",
    [[], ["collect"], ["train"], ["pretrain"], ["caption"], ["eval"], ["foresight"], ["control"], ["data"],
     ["data", "info"], ["data", "check"], ["data", "import-video"], ["data", "import-image-text"]],
)  # fmt: skip
def test_help_shows_defaults_and_does_not_crash(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: vla")
    expected = {"collect": "(default: 20)", "eval": "(default: 10)", "control": "(default: async)",
                "foresight": "(default: 200)", "train": "(default: none", "pretrain": "(default: configs/"}  # fmt: skip
    if len(command) == 1 and command[0] in expected:
        assert expected[command[0]] in text


def _commands(parser=None, prefix=()):
    """(name, parser) of every command and subcommand."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _commands(sub, (*prefix, name))


def test_every_flag_has_help_and_shows_its_default():
    """A bare `vla collect` collects Meta-World mt10 x 20: --help must say so, for every flag of every command."""
    for name, parser in _commands():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"vla {' '.join(name)} {action.option_strings[0]} has no help text"
            shown = action.default not in (None, False, [], argparse.SUPPRESS) and not action.required
            if shown:
                assert "default" in " ".join(action.help.split()).lower() or f"(default: {action.default})" in text, (
                    f"vla {' '.join(name)} {action.option_strings[0]} does not show its default {action.default!r}"
                )


def test_version(capsys):
    from vla import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"vla {__version__}"


# --- the documented commands keep working --------------------------------------------------------
def _documented_commands() -> list[list[str]]:
    """Every `vla ...` line of the README's code blocks and the Makefile's recipes (variables filled in)."""
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in readme.splitlines() if line.startswith("    vla ")]
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    lines += [line.strip().replace("$(VLA)", "vla") for line in makefile.splitlines() if "$(VLA) " in line]
    commands = [shlex.split(re.sub(r"\$\(\w+\)", "x", line), comments=True)[1:] for line in lines]
    assert len(commands) > 25 and any(c[0] == "control" for c in commands)
    return commands


def test_the_documented_commands_parse_and_make_valid_configs():
    parser = build_parser()
    for argv in _documented_commands():
        args = parser.parse_args(argv)
        command = {"collect": [CollectConfig], "eval": [EvalConfig], "control": [ControlConfig]}.get(argv[0], [])
        for cls in command:
            from_args(cls, args)
        if argv[0] == "control":
            from_args(LoopConfig, args, instruction="x")
