"""`vla control`: drive a robot (sim, mock or LeRobot) with a policy at a fixed rate, behind the shield.

    vla control --policy runs/mt10 --robot sim --task drawer-close-v3 --hz 10 --duration 10
    vla control --policy runs/mt10 --robot mock --instruction "open the drawer" --config configs/robot/mock.yaml
    vla control --policy runs/so100 --robot lerobot:so100_follower --config configs/robot/so100_follower.yaml \\
        --instruction "pick up the cube" --record data/deploy.zarr --success yes

The flags are the fields of `ControlConfig` and of the loop's `LoopConfig` (see `vla.options`), plus
`--set` for the robot config. `add_parser(subparsers)` adds the subcommand; `run(args)` returns the
exit code: 0 when the run ended by itself (duration, episode end), 1 after a safe stop for a fault,
130 after a signal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from vla import keys
from vla.errors import UserError, choice_error
from vla.options import add_flags, check_fields, from_args, option
from vla.policies.base import ZeroPolicy
from vla.robot.config import RobotConfig, default_config_path, load_robot_config
from vla.robot.loop import ControlLoop, LoopConfig
from vla.robot.report import format_report

ROBOTS = ("sim", "mock", "lerobot:<type>")


@dataclass
class ControlConfig:
    """`vla control`'s flags besides the loop's (`LoopConfig`), one field each (see `vla.options`)."""

    policy: str = option(help="a run or checkpoint directory, lerobot:PATH (a LeRobot-trained policy), or zero "
                         "(the do-nothing policy)")  # fmt: skip
    robot: str = option("sim", help="sim | mock | lerobot:<type> (e.g. lerobot:so100_follower)")
    config: str | None = option(None, help="robot + shield YAML (default: configs/robot/<robot>.yaml)")
    instruction: str | None = option(None, help="what to do (default for sim: the task's instruction)")
    suite: str | None = option(None, help="sim: the suite (default: the policy's, as for vla eval)")
    task: str | None = option(None, help="sim: the task (default: the policy's first eval task)")
    seed: int | None = option(None, min=0, help="sim: the episode seed (default: the robot config's)")
    threads: int | None = option(None, min=1, help="torch threads (default: cores - 1, at most 4)")
    compile: bool = option(False, help="compile the policy's streaming step before the loop starts (on a "
                           "CPU ahead of time: 1-2 min on 2 cores; faster steps: see the README's inference "
                           "table)")  # fmt: skip
    record: str | None = option(None, metavar="STORE", help="append the run to this store as an episode")
    success: str | None = option(None, choices=("yes", "no"), help="the recorded episode's label (default: the "
                                 "sim's)")  # fmt: skip
    report: str | None = option(None, metavar="FILE", help="write the report as JSON")

    def __post_init__(self):
        check_fields(self)
        robot_kind(self.robot)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("control", help="run a policy on a robot (sim, mock, lerobot) at a fixed rate")
    add_flags(p, ControlConfig)
    add_flags(p, LoopConfig, skip=("instruction",))  # --instruction is ControlConfig's: the robot may supply it
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. shield.stop_hold=1")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


# --- building the pieces ---------------------------------------------------------------------------
def load_policy(spec: str, compile: bool = False):
    """A checkpoint policy (actions only, no foresight decoding; `compile`: its streaming step compiled), a
    LeRobot one (`lerobot:PATH`) or None for `zero`."""
    if spec == "zero":
        return None
    from vla.checkpoint import load_policy, resolve
    from vla.policies.lerobot_policy import is_lerobot, load_lerobot_policy

    if is_lerobot(spec):
        if compile:
            raise UserError(f"--compile is for vla checkpoints; {spec} runs in LeRobot's own environment")
        return load_lerobot_policy(spec)
    try:
        resolve(spec)
    except UserError:
        raise UserError(f"--policy {spec!r} is neither zero nor a checkpoint directory (no policy.yaml + "
                        "model.safetensors in it or in its checkpoint/)") from None  # fmt: skip
    # The loop needs actions; decoding foreseen frames would only add latency.
    return load_policy(spec, foresee=False, acting=True, compile=compile)


def _policy_features(policy) -> dict[str, keys.Spec] | None:
    return None if policy is None else dict(policy.features)


def _policy_eval(spec: str, policy):
    """The periodic-evaluation settings of the run that trained the policy (suite, tasks), if any."""
    from vla.checkpoint import load_run_config

    if policy is None:
        return None
    try:
        return load_run_config(spec).train.eval
    except UserError:  # a policy directory without its run config
        return None


def _policy_suite(spec: str, policy) -> str:
    """The suite `vla eval` would evaluate the policy in (`vla.eval_config.default_suite`)."""
    from vla.eval_config import default_suite

    return default_suite(None if policy is None else spec, _policy_features(policy))


def robot_kind(spec: str) -> tuple[str, str]:
    if spec in ("sim", "mock"):
        return spec, ""
    if spec.startswith("lerobot:") and spec.split(":", 1)[1]:
        return "lerobot", spec.split(":", 1)[1]
    raise choice_error("robot", spec, ROBOTS)


def _sim_target(cmd: ControlConfig, cfg: RobotConfig, policy) -> tuple[str, str]:
    """Suite and task: the flags, else the robot config, else the policy's eval settings (first task)."""
    from vla import envs

    evalc = _policy_eval(cmd.policy, policy)
    suite = cmd.suite or cfg.robot.sim.suite or _policy_suite(cmd.policy, policy)
    task = cmd.task or cfg.robot.sim.task or (evalc.tasks if evalc and evalc.suite == suite else "")
    s = envs.get_suite(suite)
    if not task:  # a task the policy never saw would only rehearse failure: make the user choose
        raise UserError(f"--task is required: the policy names no {suite} eval task; e.g. {', '.join(s.tasks()[:4])}")
    return suite, envs.resolve_tasks(s, task)[0]


def build_robot(cmd: ControlConfig, cfg: RobotConfig, policy, hz: float):
    kind, rtype = robot_kind(cmd.robot)
    features = _policy_features(policy)
    if kind == "sim":
        from vla.robot.sim import SimRobot

        suite, task = _sim_target(cmd, cfg, policy)
        image_keys = [k for k in features or {} if keys.is_image_key(k)]
        cameras = tuple(keys.camera_of(k) for k in image_keys) or None
        size = features[image_keys[0]].shape[0] if image_keys else keys.IMAGE_SIZE
        seed = cmd.seed if cmd.seed is not None else cfg.robot.sim.seed
        return SimRobot(suite, task, hz=hz, image_size=size, cameras=cameras, seed=seed,
                        max_steps=cfg.robot.sim.max_steps or None)  # fmt: skip
    if kind == "mock":
        from vla.robot.mock import Fault, MockRobot

        m = cfg.robot.mock
        faults = [Fault(f.tick, f.kind, f.value) for f in m.faults]
        return MockRobot(features, faults=faults, fault_rates=m.fault_rates, seed=m.seed, action_mode=m.action_mode,
                         start=m.start or None)  # fmt: skip
    from vla.robot.lerobot import make_lerobot_robot

    lr = cfg.robot.lerobot
    return make_lerobot_robot(rtype, lr.config, image_size=lr.image_size or None, cameras=lr.cameras or None,
                              calibrate=lr.calibrate)  # fmt: skip


def _config(cmd: ControlConfig, overrides: list[str], policy) -> RobotConfig:
    kind, rtype = robot_kind(cmd.robot)
    path = cmd.config
    if path is None:
        name = {"mock": "mock", "lerobot": rtype}.get(kind)
        if kind == "sim":
            name = f"sim-{cmd.suite or _policy_suite(cmd.policy, policy)}"
        path = default_config_path(name)
        if path is None and kind == "lerobot":
            raise UserError(f"--robot {cmd.robot} needs a robot config with its shield limits: --config FILE "
                            "(see configs/robot/so100_follower.yaml)")  # fmt: skip
    return load_robot_config(path, overrides)


def default_threads() -> int:
    """Torch threads for batch-1 inference beside the loop: cores - 1 (at most 4). The loop and the sim's
    renderer keep a core, and on a shared machine a parallel region that spans every core stalls
    whenever one is busy (measured here: 505 ms a step with 2 threads beside another job, 10 ms with 1)."""
    return min(4, max(1, (os.cpu_count() or 1) - 1))


def _threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(threads or default_threads())


# --- the command -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from vla.policies.executor import check_n_action_steps
    from vla.robot.protocol import check_policy_fits, robot_features
    from vla.robot.record import Recorder

    cmd = from_args(ControlConfig, args)  # the flags checked before anything is loaded or moved
    loop_cfg = from_args(LoopConfig, args, instruction="")
    policy = load_policy(cmd.policy, cmd.compile)
    cfg = _config(cmd, args.set, policy)
    robot = build_robot(cmd, cfg, policy, loop_cfg.hz)
    recorder, instruction = None, (cmd.instruction or "").strip()
    try:
        # Every input is checked before anything is created or moved (the store last of all).
        if not instruction and not hasattr(robot, "instruction"):  # only the sim brings its task's own
            raise UserError(f"--instruction is required for robot {cmd.robot!r} (got {cmd.instruction!r})")
        if policy is None:
            policy = ZeroPolicy(robot_features(robot), chunk=10)  # chunks of 10, as a trained policy's
        else:
            check_policy_fits(policy.features, robot)
            _threads(cmd.threads)
        if loop_cfg.n_action_steps is not None:
            check_n_action_steps(policy, loop_cfg.n_action_steps)
        # Opened before the robot moves: a store of another schema, or locked, fails the run up front; one it
        # created is removed again if the run records nothing.
        recorder = Recorder(cmd.record, robot_features(robot), fps=loop_cfg.hz) if cmd.record else None
        robot.connect()
        instruction = instruction or robot.instruction
        loop_cfg = replace(loop_cfg, instruction=instruction)
        if cmd.compile and not args.quiet:
            print("vla control: warming up, compiling the streaming step first (1-2 min on 2 cores)", file=sys.stderr)
        report = ControlLoop(robot, policy, cfg.shield, loop_cfg, recorder, progress=not args.quiet).run()
        info = getattr(robot, "info", None)  # the sim's sticky success also covers the last step
        if isinstance(info, dict) and info.get(keys.SUCCESS):
            report.success = True
    except BaseException:
        if recorder is not None:
            recorder.close()
        raise
    finally:
        if robot.is_connected:
            robot.disconnect()
    out = {"robot": robot.name, "policy": cmd.policy, "instruction": instruction, **report.to_json()}
    if recorder is not None:
        success = {"yes": True, "no": False}.get(cmd.success, bool(report.success))
        task = getattr(robot, "task", None) or robot.name  # the sim's task name, as collected stores label it
        episode = recorder.write(instruction=instruction, task=task, success=success)
        out["recorded"] = {"store": cmd.record, "episode": episode, "success": success}
    print(format_report(report, robot.name, out.get("recorded")))
    if cmd.report:
        Path(cmd.report).parent.mkdir(parents=True, exist_ok=True)
        Path(cmd.report).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {cmd.report}")
    return {"completed": 0, "fault": 1, "signal": 130}[report.stopped_by]
