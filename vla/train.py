"""One flat loop for pretraining and finetuning: AdamW, warmup + cosine, clipping, EMA, bf16 autocast,
gradient accumulation, periodic validation and checkpoints, exact resume, `torchrun` data parallelism.

    vla train --config configs/quickstart.yaml --set train.steps=500
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vla import checkpoint, envs, keys
from vla.config import Config
from vla.datasets.sampler import collate
from vla.errors import UserError, choice_error
from vla.init_from import init_from
from vla.policies.config import resolve_gripper
from vla.policies.vla_policy import VLAPolicy
from vla.resume import prepare
from vla.train_data import MixtureOrder, batches, build_data, loader_generator
from vla.train_device import distributed, numerics, train_device, use_bf16

log = logging.getLogger(__name__)


# --- optimisation ------------------------------------------------------------------------------------
def make_optimizer(policy: torch.nn.Module, cfg: Config):
    decay = [p for p in policy.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in policy.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA) updates every tensor in one pass: 5x faster than the per-tensor loop here.
    fused = all(p.device.type in ("cpu", "cuda") for p in decay + no_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=fused)
    t = cfg.train

    def lr_factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


class EMA:
    """An exponential moving average of the weights (float copies of every parameter and buffer)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm up: early weights are not worth remembering
        floats, averages = [], []
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(v.detach().float())
                averages.append(self.state[k])
            else:
                self.state[k].copy_(v)
        torch._foreach_lerp_(averages, floats, 1 - d)  # average += (1 - d) (weight - average), all in one kernel


# --- the loop ----------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)  # training loss per optimizer step of this call
    val_loss: float | None = None
    success: float | None = None  # mean success of the last periodic simulator evaluation
    init_report: dict | None = None


@dataclass
class _Run:
    """A run as its step loop sees it: the model and its optimiser, the data, where the loop stands."""

    cfg: Config
    policy: VLAPolicy
    model: torch.nn.Module  # the policy, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    train_set: object
    val_set: list
    order: MixtureOrder
    stats: dict
    device: torch.device
    bf16: bool
    rank: int
    world: int
    step: int
    epoch: int
    start: int  # batch index within `epoch` to continue from


def train(
    cfg: Config,
    resume: bool = False,
    init: str | None = None,
    progress: bool = True,
    stop_at: int | None = None,
    given: list[str] | None = None,
) -> TrainResult:
    """Train to `cfg.train.steps` (or stop early at `stop_at` with a checkpoint, as an interruption would).
    resume: continue the run in `cfg.train.out` exactly where its checkpoint stopped; `given` names the
    settings the user set (see `prepare`). Raises UserError for a bad config, data or checkpoint."""
    cfg = prepare(cfg, resume, given)
    out = Path(cfg.train.out)
    result = TrainResult(out, cfg.train.steps)
    run = _start(cfg, resume, init, result)
    with _no_half_made_run(out, run.rank == 0):
        out.mkdir(parents=True, exist_ok=True)
        if result.init_report and run.rank == 0:
            (out / "init_report.json").write_text(json.dumps({"init_from": init, **result.init_report}, indent=1))
        _step_loop(run, result, progress, min(cfg.train.steps, stop_at or cfg.train.steps))
        return result


def _start(cfg: Config, resume: bool, init: str | None, result: TrainResult) -> _Run:
    """The policy, optimiser and data of the run, restored from its checkpoint when resuming."""
    rank, world = distributed()
    device, out = train_device(cfg), Path(cfg.train.out)
    check_eval(cfg)
    torch.manual_seed(cfg.train.seed + rank)
    train_set, val_set, order, features, stats = build_data(cfg)
    order.batches_per_epoch(cfg.train.batch_size * world)
    cfg.policy.features = features
    cfg.policy, why = resolve_gripper(cfg.policy, stats)  # saved resolved: a resume and a loaded policy agree
    policy = VLAPolicy(cfg.policy, stats).to(device).train()
    if init:
        result.init_report = init_from(policy, init)
    opt, sched = make_optimizer(policy, cfg)
    ema = EMA(policy, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    step, epoch, start = restore(out, policy, opt, sched, ema) if resume else (0, 0, 0)
    if step > cfg.train.steps:
        raise UserError(f"{out} is at step {step}, past train.steps {cfg.train.steps}: set train.steps above it")
    model = _data_parallel(policy, device) if world > 1 else policy
    if cfg.train.compile:  # the wrapper runs the pass; checkpoints, EMA and validation use `policy` itself
        model = torch.compile(model)
    bf16 = use_bf16(cfg, device)
    if rank == 0:
        log.info(run_summary(cfg, train_set, val_set, policy, device, bf16, world, step))
        if keys.ACTION in features:  # logged with the summary, once the run is known to start
            log.info("policy.gripper: %s (%s)", cfg.policy.gripper, "the run's, as it started" if resume else why)
        if cfg.train.compile:
            log.info("train.compile: the first step builds the training pass (a minute or two on 2 CPU cores), and "
                     "each new batch shape (another store's kind, a caption's length) builds once more")  # fmt: skip
    return _Run(cfg, policy, model, opt, sched, ema, train_set, val_set, order, stats, device, bf16, rank, world,
                step, epoch, start)  # fmt: skip


def _step_loop(run: _Run, result: TrainResult, progress: bool, last: int) -> None:
    """Optimizer steps from `run.step` to `last`, with the periodic logging, validation, checkpoints and
    simulator evaluations of `cfg.train`."""
    cfg, out = run.cfg, result.out
    logger = MetricLogger(out, enabled=run.rank == 0, start=run.step)
    stream = batches(run.train_set, run.order, cfg.train.batch_size, run.epoch, run.start, run.rank, run.world,
                     cfg.data.num_workers)  # fmt: skip
    bar = tqdm(total=cfg.train.steps, initial=run.step, disable=not progress or run.rank != 0, desc="train",
               unit="step", mininterval=0.5)  # fmt: skip
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.bf16)
    log.info("numerics: %s", numerics(run.device, run.bf16))
    samples_per_step = cfg.train.batch_size * cfg.train.grad_accum * run.world
    tick = time.perf_counter()
    while run.step < last:
        loss, metrics, grad_norm, run.epoch, index = optimizer_step(
            cfg, run.model, stream, run.opt, run.sched, autocast
        )
        run.step += 1
        step = run.step
        if run.ema:
            run.ema.update(run.policy, step)
        result.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)  # drawn by the update: one frame per step at most
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            rate = cfg.train.log_every * samples_per_step / (time.perf_counter() - tick)
            logger.log(step, "train", {"loss": loss, "grad_norm": grad_norm, "lr": run.sched.get_last_lr()[0],
                                       "samples_per_s": rate, **metrics})  # fmt: skip
            tick = time.perf_counter()
        if run.val_set and (step % cfg.train.val_every == 0 or step == cfg.train.steps):
            weights = run.ema.state if run.ema else run.policy.state_dict()
            result.val_loss = validate(cfg, weights, run.stats, run.val_set, run.device, run.bf16)
            logger.log(step, "val", {"loss": result.val_loss})
        _save_and_simulate(run, result, logger, last, {"epoch": run.epoch, "batch": index + 1})
    bar.close()
    logger.close()


def _save_and_simulate(run: _Run, result: TrainResult, logger, last: int, position: dict) -> None:
    """The checkpoint due at this step (every `save_every`, the last step, before a simulator evaluation)
    and the simulator evaluation due (`train.eval`: every `every` steps and at the end). Rank 0 only."""
    cfg, step, out = run.cfg, run.step, result.out
    evaluate_now = cfg.train.eval.suite and (
        step == last or (cfg.train.eval.every and step % cfg.train.eval.every == 0)
    )
    if run.rank != 0:
        return
    if step % cfg.train.save_every == 0 or step == last or evaluate_now:
        save(cfg, run.policy, run.ema, run.opt, run.sched, step, position, out)
    if evaluate_now:
        result.success = simulate(cfg, out, step)
        logger.log(step, "eval", {"success": result.success})
        log.info("step %d: simulator success %.1f%% (%s, %s; %d episodes per task) in %s", step,
                 100 * result.success, cfg.train.eval.suite, cfg.train.eval.tasks, cfg.train.eval.episodes,
                 out / "eval" / f"step-{step:07d}")  # fmt: skip


@contextlib.contextmanager
def _no_half_made_run(out: Path, owner: bool):
    """A run directory made here is removed again when bad input (a UserError) stops the run before its
    first checkpoint: nothing half-made is left behind."""
    created = not out.exists()
    try:
        yield
    except UserError:
        if owner and created and not (out / checkpoint.CHECKPOINT).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def check_eval(cfg: Config) -> None:
    """`train.eval`'s suite and tasks, checked before training rather than when the first evaluation runs."""

    ev = cfg.train.eval
    if ev.suite not in ("", *envs.SUITES):
        raise choice_error("train.eval.suite", ev.suite, ["'' (none)", *envs.SUITES])
    if not ev.suite:
        if ev.tasks:
            raise UserError(f"train.eval.tasks {ev.tasks!r} needs train.eval.suite; valid: {', '.join(envs.SUITES)}")
        return
    suite = envs.get_suite(ev.suite)
    if not ev.tasks:
        raise UserError(f"train.eval.tasks is empty; valid: {', '.join([*suite.groups, 'all'])} or {suite.name} tasks")
    envs.resolve_tasks(suite, ev.tasks)


def run_summary(cfg: Config, train_set, val_sets, policy, device, bf16: bool, world: int, step: int) -> str:
    """One line: the data, the steps and batch, the policy's size and the device."""
    stores = {d.store.path: d.store for d in train_set.datasets}
    episodes = sum(len(d.episodes) for d in train_set.datasets) + sum(len(d.episodes) for d in val_sets)
    steps = sum(s.num_steps for s in stores.values())
    batch = f"batch {cfg.train.batch_size}" + (f" x {cfg.train.grad_accum} accumulated" if cfg.train.grad_accum > 1
                                               else "") + (f" x {world} processes" if world > 1 else "")  # fmt: skip
    params = sum(p.numel() for p in policy.parameters())
    resumed = f", resuming from step {step}" if step else ""
    return (f"train: {len(stores)} store{'s' if len(stores) > 1 else ''} ({episodes:,} episodes, {steps:,} steps, "
            f"{len(train_set):,} training windows); {cfg.train.steps:,} steps of {batch}{resumed}; "
            f"{cfg.policy.preset} policy, {params / 1e6:.1f} M parameters; {device} "
            f"({'bf16 autocast' if bf16 else 'float32'}); run in {cfg.train.out}")  # fmt: skip


def _data_parallel(policy: VLAPolicy, device: torch.device) -> torch.nn.Module:
    # Unused parameters are the rule, not a bug: a video batch never reaches the action head.
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(policy, device_ids=device_ids, find_unused_parameters=True)


def restore(out: Path, policy, opt, sched, ema: EMA | None) -> tuple[int, int, int]:
    """Load a run's train_state for an exact resume; returns (step, epoch, batch within the epoch)."""
    directory = checkpoint.resolve(out)
    state = checkpoint.load_train_state(directory)
    policy.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    for group, base in zip(opt.param_groups, sched.base_lrs):  # train.steps may have changed the schedule
        group["lr"] = base * sched.lr_lambdas[0](sched.last_epoch)
    if ema:
        device = next(policy.parameters()).device
        ema.state = {k: v.float().to(device) for k, v in checkpoint.load_weights(directory).items()}
    checkpoint.set_rng_state(state["rng"])
    return int(state["step"]), int(state["epoch"]), int(state["batch"])


def optimizer_step(cfg: Config, model, stream, opt, sched, autocast):
    """`grad_accum` micro-batches, clipping, one AdamW and scheduler step.
    Returns (loss of the last micro-batch, its metrics, the gradient norm, epoch, batch index)."""
    for _ in range(cfg.train.grad_accum):
        epoch, index, batch = next(stream)
        with autocast:
            loss, metrics = model(batch)
        (loss / cfg.train.grad_accum).backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach()), metrics, float(grad_norm), epoch, index


@torch.no_grad()
def validate(cfg: Config, weights: dict, stats, val_sets: list, device, bf16: bool, max_batches: int = 20) -> float:
    """Mean loss of the (EMA) weights over up to `max_batches` validation batches per store, in a fixed
    order (each batch from one store, as in training)."""
    with torch.random.fork_rng():  # building a model draws random numbers: keep the training stream intact
        policy = VLAPolicy(cfg.policy, stats).to(device).eval()
    policy.load_state_dict(weights)
    losses = []
    for val_set in val_sets:
        plan = np.array_split(np.arange(len(val_set)), max(1, len(val_set) // cfg.train.batch_size))[:max_batches]
        loader = DataLoader(val_set, batch_sampler=[p.tolist() for p in plan], collate_fn=collate,
                            generator=loader_generator(cfg.train.seed, 1))  # fmt: skip
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            losses += [float(policy(batch)[0]) for batch in loader]
    return float(np.mean(losses))


def simulate(cfg: Config, out: Path, step: int) -> float:
    """Roll the checkpoint just saved out in the simulator; returns the mean success over tasks."""
    from vla.evaluate import EvalConfig, evaluate

    ev = cfg.train.eval
    eval_cfg = EvalConfig(policy=str(out), suite=ev.suite, tasks=ev.tasks, episodes=ev.episodes,
                          max_steps=ev.max_steps, videos=0, out=str(out / "eval" / f"step-{step:07d}"))  # fmt: skip
    with torch.random.fork_rng():
        report, _ = evaluate(eval_cfg, progress=False)
    return float(report["means"][0]["success_rate"]) if report["means"] else float("nan")


def save(cfg, policy, ema, opt, sched, step, position, out) -> Path:
    weights = ema.state if ema else {k: v.detach().float() for k, v in policy.state_dict().items()}
    state = {
        "model": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": checkpoint.rng_state(),
        "step": step,
        **position,
    }
    return checkpoint.write(out, cfg, policy, weights, state)


class MetricLogger:
    """JSONL always; TensorBoard when the package is there. A run starting at step `start` (a resume)
    keeps the entries up to that step and drops later ones, which the run is about to log again; a new
    run (start 0) starts both afresh."""

    def __init__(self, out: Path, enabled: bool, start: int = 0):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if enabled:
            path = out / "metrics.jsonl"
            kept = [line for line in _read_lines(path) if _step_of(line) is not None and _step_of(line) <= start]
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)
            self.file = open(path, "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=start + 1)  # hides later events of a killed run
            except ImportError:
                log.info("tensorboard is not installed: metrics go to metrics.jsonl only")

    def log(self, step: int, split: str, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.file.flush()
        if self.tb:
            for name, value in values.items():
                self.tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


def _step_of(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line a kill cut short."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
