"""`ssondo train`: distil a teacher's cached embeddings into a student.

The loop: batch_loss (step.py: log-mel, mixup, SpecAugment, student, loss) -> backward -> clip
-> Adam -> EfficientAT schedule, with logging, validation and checkpoints every few steps.

Exact resume: the data of step s is a pure function of (seed, s) (see sampling.py / stream.py),
and a checkpoint holds weights, optimiser, scheduler and every rank's RNG states, so a run killed
at any point and resumed from its last checkpoint ends with the same weights, bit for bit on a CPU.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ssondo_cache import lifecycle
from ssondo_cache.atomic import write_json, write_text
from ssondo_cache.devices import resolve_device
from ssondo_cache.provenance import now_iso
from ssondo_cache.typed_config import ConfigError
from ssondo_distill import run_state
from ssondo_distill.checkpoint import save_student
from ssondo_distill.config import TrainConfig
from ssondo_distill.init_weights import apply_init, describe_init
from ssondo_distill.sampling import split_holdout
from ssondo_distill.schedule import build_scheduler
from ssondo_distill.step import (
    apply_target_norm,
    batch_loss,
    build_parts,
    mean_target_baseline,
    validate,
)
from ssondo_distill.stream import BalancedStream, StreamConfig
from ssondo_distill.students import build_student, count_parameters
from ssondo_distill.training_data import load_validation, open_training_data

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run: str
    steps: int  # optimisation steps done in total
    samples: int  # training samples seen in total (all ranks)
    final_loss: float | None  # mean training loss of the last logging interval
    val_cosine_distance_init: float | None  # 1 - mean cos(student, teacher) on held-out clips, at step 0
    val_cosine_distance: float | None  # ... at the end
    samples_per_s: float | None  # training samples per second over this invocation
    student_path: str | None
    resumed_from: int | None = None
    parameters: dict[str, Any] | None = None  # dry run: count_parameters()
    # what always predicting the mean direction scores: cos(target_i, mean of the other held-out targets)
    val_mean_baseline: float | None = None
    init: dict[str, Any] | None = None  # the starting weights (--init): init_weights.InitReport.record()

    def summary(self) -> str:
        if self.parameters is not None:
            p = self.parameters
            paper = f"{p['paper_backbone'] / 1e6:.1f} M" if p["paper_backbone"] else "n/a for these settings"
            return (
                f"student {p['student']} into a {p['teacher_dim']}-d teacher: backbone {p['backbone']:,} + head "
                f"{p['head']:,} = {p['total']:,} parameters (paper's backbone: {paper}); {p['covers']}"
                + (f"; {describe_init(p['init'])}" if p.get("init") else "")
            )
        val = (
            f"validation cosine distance {self.val_cosine_distance_init:.4f} -> {self.val_cosine_distance:.4f} "
            f"(mean-target baseline {self.val_mean_baseline:.4f})"
            if None not in (self.val_cosine_distance, self.val_cosine_distance_init, self.val_mean_baseline)
            else ""
        )
        speed = f", {self.samples_per_s:.1f} samples/s" if self.samples_per_s else ""
        start = f"; {describe_init(self.init)}" if self.init else ""
        return (
            f"{self.run}: {self.steps} steps, {self.samples} samples{speed}; {val}; "
            f"student {self.student_path}{start}"
        )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers: one thread each, the step owns the rest


def train(cfg: TrainConfig, progress: bool = True, rank: int = 0, world_size: int = 1) -> TrainResult:
    """Train ``cfg.student`` on ``cfg.cache`` targets into ``cfg.out`` (see module doc).

    ``rank``/``world_size``: this process under torchrun (the process group is initialised here,
    gloo on CPU, nccl on CUDA, from torchrun's environment, unless the caller did it already)."""
    if cfg.dry_run:
        return _dry_run(cfg)
    cfg.require_paths()
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} (global) does not split over {world_size} ranks")
    steps_per_epoch = cfg.samples_per_epoch // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(
            f"samples_per_epoch {cfg.samples_per_epoch} is less than one batch of {cfg.batch_size}"
        )
    end_step = (
        cfg.epochs * steps_per_epoch
        if cfg.max_steps is None
        else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    )
    device = resolve_device(cfg.device)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            if device.index is None:  # no LOCAL_RANK (not torchrun): one GPU per rank all the same
                device = torch.device("cuda", rank % torch.cuda.device_count())
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    elif device.type == "cuda" and device.index is None and world_size > 1:  # the caller set it up
        device = torch.device("cuda", torch.cuda.current_device())

    data = open_training_data(
        cfg.work,
        cfg.cache,
        cfg.manifest,
        cfg.target,
        cfg.clip_seconds,
        cfg.teacher,
        cfg.allow_foreign_manifest,
    )
    if cfg.loss == "cluster_contrastive" and data.table.kind == "random":
        raise ConfigError("loss cluster_contrastive needs clusters: give a balanced manifest, not 'random'")
    run = Path(cfg.out)
    identity = run_state.identity(cfg, data, world_size)
    finished = run_state.finished_result(run, identity, end_step)
    if finished is not None:
        log.info(
            "%s already finished %d steps with this configuration: nothing to do", run, finished["steps"]
        )
        return TrainResult(**finished)
    train_table, val_pos = split_holdout(data.table, cfg.val_clips, cfg.seed)
    parts = build_parts(cfg, data.embed_dim, data.view.sample_rate, device, rank, world_size)
    target_norm = apply_target_norm(cfg, data, train_table, parts)
    optimizer = torch.optim.Adam(
        parts.student.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
    )
    scheduler = build_scheduler(optimizer, cfg.schedule, steps_per_epoch)
    step, resumed_from = 0, None
    ckpt = run_state.latest_checkpoint(run)
    if ckpt is not None and not cfg.resume:
        raise ConfigError(
            f"{run} holds an unfinished run (checkpoint {ckpt.name}): pass --resume to continue it, "
            "or choose another --out"
        )
    if ckpt is not None:
        step = resumed_from = run_state.load(ckpt, identity, parts, optimizer, scheduler, rank, world_size)
        if cfg.init is not None:
            parts.student.init_info = _recorded_init(run)
    elif cfg.init is not None:  # a fresh run only: a resumed one has its weights in the checkpoint
        apply_init(parts.student, cfg.init)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        provenance = run_state.provenance(cfg, data, identity, world_size)
        provenance["init"] = parts.student.init_info if cfg.init is not None else None
        write_json(run / "config.json", provenance)
        run_state.truncate_metrics(run / "metrics.jsonl", step)
    val = load_validation(data, val_pos) if rank == 0 else {}
    stream = BalancedStream(
        data.view,
        train_table,
        StreamConfig(
            seed=cfg.seed,
            steps_per_epoch=steps_per_epoch,
            batch_size=cfg.batch_size // world_size,
            rank=rank,
            world_size=world_size,
            workers=max(1, cfg.num_workers),
            shuffle_buffer=cfg.shuffle_buffer,
            reuse_buffers=True,  # the loop is done with each batch before it asks for the next
        ),
    )
    metrics = run_state.MetricsLog(run / "metrics.jsonl", enabled=rank == 0)
    val_init = metrics.last_value("val_cosine_distance", at_step=0)
    baseline = metrics.last_value("val_mean_baseline", at_step=0)
    if step == 0 and rank == 0:
        # with normalised targets the mean target is the origin: a student that learnt only the
        # average direction scores 1 - cos = 1 there
        baseline = mean_target_baseline(val) if parts.target_shift is None else 1.0
        val_init = validate(parts, val, stream.cfg.batch_size)
        metrics.write(
            {"step": 0, "epoch": 0.0, "val_cosine_distance": val_init, "val_mean_baseline": baseline}
        )
    bar = tqdm(
        total=end_step,
        initial=step,
        unit="step",
        desc=f"train {parts.student.name}",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    parts.student.train()
    started, start_step = time.perf_counter(), step
    window_loss, window_n, window_t = torch.zeros((), device=device), 0, time.perf_counter()
    last_loss = None
    while step < end_step:
        epoch, first = divmod(step, steps_per_epoch)
        stream.set_position(epoch, first)
        stream.plan(epoch)  # here, not in the workers: a bad split (too few shards) is a plain error
        loader = stream.loader(
            cfg.num_workers,
            pin_memory=device.type == "cuda",
            multiprocessing_context=lifecycle.child_context() if cfg.num_workers else None,  # die with us
            worker_init_fn=lifecycle.WorkerInit(_worker_init) if cfg.num_workers else None,
            generator=torch.Generator(),
        )  # its own seed draw: the global RNG stays untouched
        for batch in loader:
            if (batch["epoch"], batch["step"]) != (epoch, step % steps_per_epoch):
                raise RuntimeError(
                    f"data order broken: got epoch {batch['epoch']} step {batch['step']}, "
                    f"expected {epoch}/{step % steps_per_epoch}"
                )
            parts.student.set_step(step, steps_per_epoch)  # DyMN attention temperature
            loss = batch_loss(parts, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(parts.student.parameters(), cfg.grad_clip or math.inf)
            optimizer.step()
            scheduler.step()
            step += 1
            window_loss += loss.detach()
            window_n += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == end_step:
                last_loss = run_state.mean_over_ranks(window_loss / window_n, world_size)
                now = time.perf_counter()
                rate = window_n * cfg.batch_size / (now - window_t)
                if not math.isfinite(last_loss):
                    raise FloatingPointError(
                        f"training loss became {last_loss} at step {step}: lower the lr?"
                    )
                metrics.write(
                    {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "loss": last_loss,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "samples_per_s": rate,
                    }
                )
                bar.set_postfix(loss=f"{last_loss:.4f}", samples_s=f"{rate:.0f}")
                window_loss.zero_()
                window_n, window_t = 0, now
            if rank == 0 and (step % cfg.val_every == 0 or step == end_step):
                metrics.write(
                    {
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        "val_cosine_distance": validate(parts, val, stream.cfg.batch_size),
                    }
                )
            stop = lifecycle.stop_agreed(world_size, device)  # a stop signal: every rank at this step
            if stop or step % cfg.checkpoint_every == 0 or step == end_step:
                run_state.save(
                    run,
                    step,
                    steps_per_epoch,
                    identity,
                    parts,
                    optimizer,
                    scheduler,
                    rank,
                    world_size,
                    cfg.keep_checkpoints,
                )
            if stop and step < end_step:
                raise lifecycle.Stopped(
                    stop, f"checkpoint of step {step} of {end_step} in {run / 'checkpoints'}"
                )
            if step == end_step or step % steps_per_epoch == 0:
                break
    bar.close()
    seconds = time.perf_counter() - started
    result = TrainResult(
        run=str(run),
        steps=step,
        samples=step * cfg.batch_size,
        final_loss=last_loss,
        val_cosine_distance_init=val_init,
        val_cosine_distance=metrics.last_value("val_cosine_distance"),
        samples_per_s=(step - start_step) * cfg.batch_size / seconds if step > start_step else None,
        student_path=str(run / "student.pt"),
        resumed_from=resumed_from,
        val_mean_baseline=baseline,
        init=parts.student.init_info if cfg.init is not None else None,
    )
    if rank == 0:
        save_student(
            run / "student.pt",
            parts.student,
            parts.frontend,
            data.cache_attrs["teacher_id"],
            data.embed_dim,
            extra={
                "run": str(run),
                "steps": step,
                "cache": data.cache_attrs.get("teacher_id"),
                "manifest": data.manifest,
                "seed": cfg.seed,
                "loss": cfg.loss,
            },
            target_norm=target_norm,  # folded into the projection: student.pt speaks the teacher's space
        )
        run_state.plot_curves(run / "metrics.jsonl", run / "curves.png")
        write_json(
            run / "result.json", {"identity": identity, "result": asdict(result), "finished": now_iso()}
        )
    if world_size > 1:
        dist.barrier()
    return result


def _recorded_init(run: Path) -> dict[str, Any]:
    """The starting weights a resumed run began from, as its config.json recorded them (the
    file itself is not read again: it may be gone, and the checkpoint holds the weights)."""
    path = run / "config.json"
    recorded = json.loads(path.read_text()).get("init") if path.is_file() else None
    if not recorded:
        raise ConfigError(f"{path} does not record the starting weights (--init) this run began from")
    return recorded


def _dry_run(cfg: TrainConfig) -> TrainResult:
    """Build the student for the teacher dimension (``teacher_dim``, else the cache's) and report its
    parameter counts."""
    teacher_dim = cfg.teacher_dim
    if teacher_dim is None:
        if not cfg.work or not cfg.cache:
            raise ConfigError(
                "--dry-run needs --teacher-dim D, or WORK and --cache (the teacher dimension comes from the cache)"
            )
        from ssondo_cache.cache_index import open_cache

        teacher_dim = open_cache(cfg.work, cfg.cache).embed_dim
    student = build_student(cfg.student, teacher_dim, **cfg.student_options)
    counts = count_parameters(student)
    if cfg.init is not None:  # the starting weights must fit: check them here too
        counts["init"] = apply_init(student, cfg.init).record()
    if cfg.out:
        write_text(Path(cfg.out) / "parameters.json", json.dumps(counts, indent=2) + "\n")
    return TrainResult(
        run=str(cfg.out or ""),
        steps=0,
        samples=0,
        final_loss=None,
        val_cosine_distance_init=None,
        val_cosine_distance=None,
        samples_per_s=None,
        student_path=None,
        parameters=counts,
    )
