"""`ssondo pretrain matpac`: the training loop. RUN folder as the student trainer's (run_state.py):
config.json, checkpoints/step-N.pt, metrics.jsonl, curves.png, result.json, plus encoder.pt, the
online encoder in the official MATPAC++ encoder-only layout (``ssondo extract --teacher matpac
--checkpoint RUN/encoder.pt``), and encoder-init.pt, the same encoder at step 0 (its random
initialisation from the seed, written when a fresh run starts): the baseline a probe of the
pretrained encoder is judged against.

Exact resume as the student trainer's: the data of step s is a pure function of (seed, s) (the
shared stream), masks come from a generator whose state every checkpoint holds, and a checkpoint
holds the whole model (online, EMA target, heads, centre), the optimiser and the scheduler."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ssondo_cache import lifecycle
from ssondo_cache.atomic import write_json
from ssondo_cache.devices import resolve_device
from ssondo_cache.provenance import code_version, now_iso
from ssondo_cache.typed_config import to_dict
from ssondo_distill import run_state
from ssondo_distill.checkpoint import write_torch
from ssondo_distill.pretrain.config import PretrainConfig
from ssondo_distill.pretrain.data import AudioCorpus, open_audio_corpus
from ssondo_distill.pretrain.guards import STATS, CollapseGuard, plot_curves
from ssondo_distill.pretrain.model import MatpacModel, describe_sizes
from ssondo_distill.stream import BalancedStream, StreamConfig

log = logging.getLogger(__name__)

INIT_ENCODER = "encoder-init.pt"  # the encoder at step 0, in encoder.pt's layout

NOT_IDENTITY = ("work", "out", "resume", "max_steps", "log_every", "checkpoint_every", "keep_checkpoints")
NOT_IDENTITY += (
    "device",
    "num_workers",
    "compile",
    "min_usage_entropy",
    "max_target_entropy",
    "min_latent_std",
)


@dataclass
class PretrainResult:
    run: str
    steps: int
    samples: int
    first_loss: float | None  # mean loss of the first logging interval of this invocation
    final_loss: float | None  # ... of the last one
    final_stats: dict[str, float] | None  # the collapse statistics of the last logging interval
    collapses: list[dict[str, Any]] = field(default_factory=list)  # warnings of this invocation
    samples_per_s: float | None = None
    encoder_path: str | None = None
    resumed_from: int | None = None

    def summary(self) -> str:
        stats = ", ".join(f"{k} {v:.3f}" for k, v in (self.final_stats or {}).items())
        warn = f"; COLLAPSE warnings: {[c['collapse'] for c in self.collapses]}" if self.collapses else ""
        speed = f", {self.samples_per_s:.1f} segments/s" if self.samples_per_s else ""
        return f"{self.run}: {self.steps} steps{speed}; {stats}{warn}; encoder {self.encoder_path}"


@dataclass
class Parts:  # what run_state.save / load expect of a trainer's parts
    student: nn.Module  # the whole MatpacModel (uncompiled, unwrapped)
    mixup_gen: torch.Generator  # run_state keeps this generator's state: here it draws the masks
    device: torch.device


def identity(cfg: PretrainConfig, corpus: AudioCorpus, world_size: int) -> dict[str, Any]:
    out = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IDENTITY}
    out.update(
        student="matpac",  # the keys run_state.check_identity names first
        teacher_dim=cfg.encoder.vit().grid[0] * cfg.encoder.embed_dim,
        clips_fingerprint=corpus.clips_fingerprint,
        readers_per_rank=max(1, cfg.num_workers),
        world_size=world_size,
    )
    return run_state._plain(out)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then cosine to 0 at ``total`` (fairseq's cosine schedule)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def pretrain(
    cfg: PretrainConfig, progress: bool = True, rank: int = 0, world_size: int = 1
) -> PretrainResult:
    """MATPAC(++) pretraining of ``cfg.work``'s packed audio into ``cfg.out`` (see module doc)."""
    cfg.require_paths()
    if cfg.batch_size % world_size:
        raise ValueError(f"batch_size {cfg.batch_size} (global) does not split over {world_size} ranks")
    device = resolve_device(cfg.device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    corpus = open_audio_corpus(cfg.work, cfg.encoder.frames)
    run, spe, end_step = Path(cfg.out), cfg.steps_per_epoch, cfg.end_step
    ident = identity(cfg, corpus, world_size)
    finished = run_state.finished_result(run, ident, end_step)
    if finished is not None:
        log.info(
            "%s already finished %d steps with this configuration: nothing to do", run, finished["steps"]
        )
        return PretrainResult(**finished)
    with torch.random.fork_rng(devices=[]):  # the weights depend on the seed alone
        torch.manual_seed(cfg.seed)
        model = MatpacModel(cfg)
    model.to(device)
    parts = Parts(model, torch.Generator().manual_seed(cfg.seed * 1000 + rank), device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    warmup = max(1, round(cfg.warmup_epochs * spe))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, cfg.total_steps))
    step, resumed_from = 0, None
    ckpt = run_state.latest_checkpoint(run)
    if ckpt is not None and not cfg.resume:
        raise ValueError(
            f"{run} holds an unfinished run (checkpoint {ckpt.name}): pass --resume to continue it, "
            "or choose another --out"
        )
    if ckpt is not None:
        step = resumed_from = run_state.load(ckpt, ident, parts, optimizer, scheduler, rank, world_size)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        write_json(
            run / "config.json",
            run_state._plain(
                {"config": to_dict(cfg), "identity": ident, "lr": cfg.lr, "sizes": describe_sizes(model),
                 "sample_rate": corpus.sample_rate, "code_version": code_version(), "written": now_iso()}
            ),
        )  # fmt: skip
        run_state.truncate_metrics(run / "metrics.jsonl", step)
        if resumed_from is None:
            save_encoder(model, run / INIT_ENCODER)
    net: nn.Module = model
    if world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model.compile_blocks()
    stream = BalancedStream(
        corpus.view,
        corpus.table,
        StreamConfig(
            seed=cfg.seed,
            steps_per_epoch=spe,
            batch_size=cfg.batch_size // world_size,
            rank=rank,
            world_size=world_size,
            workers=max(1, cfg.num_workers),
            shuffle_buffer=cfg.shuffle_buffer,
            reuse_buffers=True,  # each batch is used before the next is asked for
        ),
    )
    resampler = corpus.resampler().to(device)
    bf16 = device.type == "cuda" and cfg.precision != "fp32"
    metrics = run_state.MetricsLog(run / "metrics.jsonl", enabled=rank == 0)
    guard = CollapseGuard.from_config(cfg)
    bar = tqdm(
        total=end_step, initial=step, unit="step", desc="pretrain matpac", disable=not progress or rank != 0
    )
    model.train()
    started, start_step = time.perf_counter(), step
    window: list[torch.Tensor] = []  # per step: the STATS, on the device (one sync per log interval)
    window_t, first_loss, last_stats, collapses = time.perf_counter(), None, None, []
    while step < end_step:
        epoch, first = divmod(step, spe)
        stream.set_position(epoch, first)
        stream.plan(epoch)
        loader = stream.loader(
            cfg.num_workers,
            pin_memory=device.type == "cuda",
            multiprocessing_context=lifecycle.child_context() if cfg.num_workers else None,
            worker_init_fn=lifecycle.WorkerInit(_worker_init) if cfg.num_workers else None,
            generator=torch.Generator(),
        )
        for batch in loader:
            if (batch["epoch"], batch["step"]) != (epoch, step % spe):
                raise RuntimeError(f"data order broken at step {step}: got {batch['epoch']}/{batch['step']}")
            audio = resampler.batch(batch["audio"].to(device, non_blocking=True).float() / 32768.0)
            mask = model.make_mask(audio.shape[0], parts.mixup_gen)
            mask = type(mask)(
                *(t.to(device, non_blocking=True) for t in (mask.keep, mask.masked, mask.restore))
            )
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss, stats = net(model.log_mel(audio), mask, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
            optimizer.step()
            scheduler.step()
            step += 1
            model.momentum_update(step)
            window.append(torch.stack([loss.detach().float()] + [stats[k].float() for k in STATS[1:]]))
            bar.update(1)
            if step % cfg.log_every == 0 or step == end_step:
                values = torch.stack(window).cpu()  # (n, len(STATS))
                for i, row in enumerate(values.tolist()):
                    found = guard.check(step - len(window) + 1 + i, dict(zip(STATS, row, strict=True)))
                    collapses += found
                    for record in found:
                        metrics.write(record)
                means = {
                    k: run_state.mean_over_ranks(v, world_size)
                    for k, v in zip(STATS, values.mean(0), strict=True)
                }
                if not math.isfinite(means["loss"]):
                    raise FloatingPointError(
                        f"pretraining loss became {means['loss']} at step {step}: lower the lr?"
                    )
                now = time.perf_counter()
                rate = len(window) * cfg.batch_size / (now - window_t)
                first_loss = means["loss"] if first_loss is None else first_loss
                last_stats = means
                metrics.write(
                    {"step": step, "epoch": step / spe, **means, "lr": scheduler.get_last_lr()[0],
                     "teacher_temp": model.teacher_temp(step), "ema_decay": model.encoder_decay(step),
                     "segments_per_s": rate}
                )  # fmt: skip
                bar.set_postfix(loss=f"{means['loss']:.4f}", usage=f"{means['usage_entropy']:.3f}")
                window, window_t = [], now
            stop = lifecycle.stop_agreed(world_size, device)
            if stop or step % cfg.checkpoint_every == 0 or step == end_step:
                run_state.save(
                    run, step, spe, ident, parts, optimizer, scheduler, rank, world_size, cfg.keep_checkpoints
                )
            if stop and step < end_step:
                raise lifecycle.Stopped(
                    stop, f"checkpoint of step {step} of {end_step} in {run / 'checkpoints'}"
                )
            if step == end_step or step % spe == 0:
                break
    bar.close()
    seconds = time.perf_counter() - started
    result = PretrainResult(
        run=str(run),
        steps=step,
        samples=step * cfg.batch_size,
        first_loss=first_loss,
        final_loss=None if last_stats is None else last_stats["loss"],
        final_stats=last_stats,
        collapses=collapses,
        samples_per_s=(step - start_step) * cfg.batch_size / seconds if step > start_step else None,
        encoder_path=str(run / "encoder.pt"),
        resumed_from=resumed_from,
    )
    if rank == 0:
        save_encoder(model, run / "encoder.pt")
        plot_curves(run / "metrics.jsonl", run / "curves.png")
        write_json(run / "result.json", {"identity": ident, "result": asdict(result), "finished": now_iso()})
    if world_size > 1:
        dist.barrier()
    return result


def save_encoder(model: MatpacModel, path: Path) -> None:
    """The online encoder, official MATPAC++ encoder-only layout (a flat state_dict of tensors)."""
    write_torch(model.official_state_dict(), path, "the pretrained encoder")
