"""The trainer: exact resume after SIGKILL, DDP (gloo, 2 processes) vs one process, refusals,
no-op re-runs, the RUN folder, dry run. Tiny students on a tiny packed corpus (see test_stream)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from ssondo_cache.compiling import compile_module
from ssondo_cache.typed_config import ConfigError, to_dict
from ssondo_distill import trainer as trainer_module
from ssondo_distill.checkpoint import CheckpointMismatch, load_student
from ssondo_distill.config import TrainConfig, load_train_config
from ssondo_distill.losses import build_loss
from ssondo_distill.step import batch_loss, build_parts
from ssondo_distill.stream import BalancedStream, StreamConfig
from ssondo_distill.students import build_student
from ssondo_distill.students.dymn import TemperatureSchedule
from ssondo_distill.trainer import train
from ssondo_distill.training_data import open_training_data
from tests.distill.test_stream import make_corpus, write_cache

REPO = Path(__file__).resolve().parents[2]
CACHE = "tiny-000000000000/ts0.25-hop0.25"
FRONTEND = {
    "sample_rate": 8000,
    "n_fft": 256,
    "win_length": 256,
    "hop_length": 64,
    "n_mels": 64,
    "f_min": 50.0,
    "f_max": 4000.0,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer")
    w = make_corpus(root, n_clips=40, shard_size=4, dim=8)
    write_cache(w, "wide", 16, 4)
    return w


def tiny_cfg(work: Path, out: Path, **over) -> TrainConfig:
    base = dict(
        work=str(work),
        cache=CACHE,
        out=str(out),
        student="mn04",
        frontend=FRONTEND,
        clip_seconds=0.5,
        epochs=3,
        samples_per_epoch=40,
        batch_size=8,
        num_workers=0,
        val_clips=8,
        val_every=4,
        log_every=2,
        checkpoint_every=3,
        shuffle_buffer=16,
        device="cpu",
        lr=3e-3,
        mixup_alpha=0.3,
        augment={"freq_mask": 8, "time_mask": 10},
        seed=7,
        schedule={"warmup_epochs": 0.5, "rampdown_start": 1.0, "rampdown_epochs": 2.0, "last_value": 0.1},
    )
    return load_train_config(None, {**base, **over})


def _run_subprocess(cfg: TrainConfig, path: Path) -> subprocess.Popen:
    path.write_text(json.dumps(to_dict(cfg)))
    code = (
        "import sys, torch; torch.set_num_threads(1); from ssondo_distill.config import load_train_config; "
        "from ssondo_distill.trainer import train; train(load_train_config(sys.argv[1]), progress=False)"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stderr=subprocess.PIPE)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: the subprocess of the kill test uses one too (float reductions then
    match bit for bit), and tiny convolutions only lose from threads on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_sigkill_and_resume_end_bitwise_equal(work, tmp_path):
    killed = tiny_cfg(work, tmp_path / "killed")
    proc = _run_subprocess(killed, tmp_path / "killed.json")
    ref = train(tiny_cfg(work, tmp_path / "ref"), progress=False)  # uninterrupted, meanwhile
    deadline = time.time() + 240
    ckpts = tmp_path / "killed" / "checkpoints"
    while not (ckpts.is_dir() and any(ckpts.glob("step-*.pt"))):  # first checkpoint: step 3, mid-epoch 0
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "student.pt").exists()
    with pytest.raises(ConfigError, match="pass --resume"):
        train(killed, progress=False)
    resumed = train(tiny_cfg(work, tmp_path / "killed", resume=True), progress=False)
    assert resumed.resumed_from % 5 != 0 and resumed.steps == ref.steps == 15  # resumed mid-epoch
    a, b = _weights(tmp_path / "ref" / "student.pt"), _weights(tmp_path / "killed" / "student.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor)), "resume is not exact"
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == sorted(steps) and steps[-1] == 15  # no duplicated lines from the killed attempt


def test_loader_workers_with_reused_buffers_train_as_with_fresh_ones(work, tmp_path, monkeypatch):
    """The trainer reuses each worker's output buffers (StreamConfig.reuse_buffers): a batch
    overwritten before the step is done with it would change the weights."""
    over = dict(epochs=2, num_workers=2, checkpoint_every=100)
    reused = train(tiny_cfg(work, tmp_path / "reused", **over), progress=False)
    monkeypatch.setattr(
        trainer_module, "StreamConfig", lambda **kw: StreamConfig(**{**kw, "reuse_buffers": False})
    )
    fresh = train(tiny_cfg(work, tmp_path / "fresh", **over), progress=False)
    assert reused.steps == fresh.steps == 10
    a, b = _weights(tmp_path / "reused" / "student.pt"), _weights(tmp_path / "fresh" / "student.pt")
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))


def one_step_eager_compiled_fp64(out: str) -> None:
    """In a child process (after a compiled backward, forked processes such as the DDP test's
    cannot run autograd): one training-mode forward + backward of the same mn04 and batch, eager
    fp32, torch.compile'd fp32 and eager fp64 (the reference for the exact result)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = build_student("mn04", 8, dropout=0.0)  # no dropout: compiled code draws other masks
    student.train()  # BatchNorm on batch statistics, as in training
    mel, target = torch.randn(4, 1, 64, 50), torch.randn(4, 8)  # (B, 1, F, T), (B, D)
    loss = build_loss("cosine")
    double = copy.deepcopy(student).double()

    def step(model: torch.nn.Module, params: torch.nn.Module, dtype: torch.dtype) -> dict:
        params.zero_grad(set_to_none=True)
        pred = model(mel.to(dtype))
        loss(pred, target.to(dtype)).backward()
        return {"pred": pred.detach(), "grads": {n: p.grad for n, p in params.named_parameters()}}

    runs = {"eager": step(student, student, torch.float32)}
    runs["compiled"] = step(compile_module(student), student, torch.float32)  # the product's path
    runs["fp64"] = step(double, double, torch.float64)
    layers = [m for m in student.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    positions = []  # per layer, B x F' x T' of its output: its BN-statistics / weight-gradient sums
    hooks = [m.register_forward_hook(lambda m, i, o: positions.append(o[:, 0].numel())) for m in layers]
    student(mel)
    fan_in = [m.weight[0].numel() for m in layers if not isinstance(m, nn.BatchNorm2d)]
    for h in hooks:
        h.remove()
    torch.save({**runs, "n_layers": len(layers), "n_max": max(positions + fan_in)}, out)


@pytest.mark.slow
@pytest.mark.inductor
def test_compiled_student_step_matches_the_eager_one(tmp_path):
    """``compile: true``: one step's output and gradients equal eager's up to float32 rounding.
    Not a trajectory: inductor emits other kernels per vector ISA, and Adam turns rounding-level
    differences of near-zero gradients into steps of size lr, so curves differ by machine.

    Tolerance. Inductor computes the same sums in other orders (fused, vectorised). A sum of n
    float32 terms in any order has an error of at most gamma_n * sum|terms| (gamma_n ~ n u, u =
    2^-24; Higham, Accuracy and Stability, 3.1), and about sqrt(n) u * sum|terms| for rounding
    errors that behave like independent ones (Higham & Mary 2019, lambda ~ a few). A forward +
    backward chains 2 L such reductions (L = conv/linear/BN layers); to first order their relative
    errors add, so each path is within 2 L sqrt(n_max) u of the exact result, relative to the
    magnitudes involved, and the two paths within twice that. n_max is the longest reduction: the
    BN statistics and weight gradients over B x F' x T' = 4 x 32 x 25 positions after the stride-2
    stem. That gives 4 L sqrt(n_max) u ~ 1.5e-3 for mn04 (L = 110, n_max = 3200) (measured: 8e-6 output, 6e-5 worst
    gradient); a real compile bug (wrong mode, dropped term) is O(1). The magnitude involved is the
    tensor's own norm, except for the 15 BN biases whose exact gradient is 0 (a constant shift
    that the next BatchNorm removes): there fp32 gives pure rounding noise, bounded by the
    gradient's scale overall (the norm of all gradients)."""
    out = tmp_path / "steps.pt"
    code = f"from tests.distill.test_trainer import one_step_eager_compiled_fp64 as f; f({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    runs = torch.load(out, weights_only=True)
    tol = 4 * runs["n_layers"] * runs["n_max"] ** 0.5 * 2.0**-24
    assert 1e-4 < tol < 1e-2  # the bound is far above fp32 noise and far below a real difference
    eager, compiled, exact = runs["eager"], runs["compiled"], runs["fp64"]

    def rel(a: torch.Tensor, b: torch.Tensor, scale: float) -> float:
        return ((a.double() - b.double()).norm() / scale).item()

    for path in (compiled, eager):  # eager too: the bound holds for the path it is compared with
        assert rel(path["pred"], exact["pred"], exact["pred"].norm()) < tol / 2
    assert rel(compiled["pred"], eager["pred"], eager["pred"].norm()) < tol
    overall = torch.stack([g.norm() for g in exact["grads"].values()]).norm().item()
    n_zero = 0
    for name, g in exact["grads"].items():
        zero = g.norm() < 1e-9 * overall  # exactly 0 but for fp64 rounding (1e-16)
        n_zero += int(zero)
        scale = overall if zero else g.norm().item()
        for path in (compiled, eager):
            assert rel(path["grads"][name], g, scale) < tol / 2, name
        assert rel(compiled["grads"][name], eager["grads"][name], scale) < tol, name
    assert n_zero < len(exact["grads"]) // 4  # most gradients are compared to their own norm


def test_run_folder_noop_rerun_and_refusals(work, tmp_path):
    cfg = tiny_cfg(work, tmp_path / "run", epochs=2)
    result = train(cfg, progress=False)
    run = tmp_path / "run"
    assert result.steps == 10 and result.val_cosine_distance < result.val_cosine_distance_init
    assert 0 < result.val_mean_baseline < 1
    provenance = json.loads((run / "config.json").read_text())
    assert provenance["teacher_id"] == "tiny-000000000000" and provenance["ts"] == 0.25
    assert provenance["manifest"] == "random" and provenance["student"] == "mn04"
    assert provenance["loss"] == "cosine" and provenance["seed"] == 7 and provenance["cache"] == CACHE
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "samples_per_s"} <= set(lines[1]) and lines[0]["step"] == 0
    model, meta = load_student(run / "student.pt", expect_student="mn04", expect_teacher_dim=8)
    assert model(torch.zeros(2, 4000)).shape == (2, 8) and meta["teacher_id"] == "tiny-000000000000"
    # a finished run re-run with the same settings is a no-op
    stamp = (run / "student.pt").stat().st_mtime_ns
    again = train(cfg, progress=False)
    assert again.steps == 10 and (run / "student.pt").stat().st_mtime_ns == stamp
    # ... and with other settings it is refused, naming the difference
    with pytest.raises(CheckpointMismatch, match="lr: 0.003 there, 0.001 now"):
        train(tiny_cfg(work, tmp_path / "run", epochs=2, lr=1e-3), progress=False)
    # a checkpoint of another student, or for another teacher dimension, is refused naming both
    (run / "result.json").unlink()
    with pytest.raises(
        CheckpointMismatch, match="student 'mn04' for a 8-d teacher.*student 'mn05' for a 8-d"
    ):
        train(tiny_cfg(work, run, epochs=2, student="mn05", resume=True), progress=False)
    with pytest.raises(CheckpointMismatch, match="8-d teacher.*16-d teacher"):
        train(
            tiny_cfg(work, run, epochs=2, cache="wide-000000000000/ts0.25-hop0.25", resume=True),
            progress=False,
        )
    with pytest.raises(
        ValueError, match=r"too few shards: epoch 0 reads \d+ tar shard\(s\) for 1 rank\(s\) x 12 "
    ):
        train(tiny_cfg(work, tmp_path / "y", num_workers=12), progress=False)
    with pytest.raises(ConfigError, match="cluster_contrastive needs clusters"):
        train(tiny_cfg(work, tmp_path / "x", loss="cluster_contrastive", mixup_alpha=0.0), progress=False)


def test_dymn_temperature_follows_the_schedule_and_dry_run(work, tmp_path):
    cfg = tiny_cfg(
        work,
        tmp_path / "dymn",
        student="dymn04",
        epochs=1,
        max_steps=3,
        val_clips=0,
        mixup_alpha=0.0,
        checkpoint_every=100,
    )
    train(cfg, progress=False)
    state = _weights(tmp_path / "dymn" / "student.pt")
    # set_step runs before each step: the last step (index 2 of 5 per epoch) set epoch 0.4
    assert state["_extra_state"]["temperature"] == pytest.approx(TemperatureSchedule()(2 / 5))
    dry = train(tiny_cfg(work, tmp_path / "dry", dry_run=True), progress=False)
    assert dry.parameters["student"] == "mn04" and dry.parameters["teacher_dim"] == 8
    assert dry.parameters["backbone"] > 0 and "backbone" in dry.summary()
    assert json.loads((tmp_path / "dry" / "parameters.json").read_text()) == dry.parameters
    assert not (tmp_path / "dry" / "checkpoints").exists()


def _ddp_worker(rank: int, work: str, out: str, init_file: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    cfg = tiny_cfg(Path(work), Path(out) / "run", mixup_alpha=0.0, epochs=1, checkpoint_every=2)
    data = open_training_data(cfg.work, cfg.cache, cfg.manifest, cfg.target, cfg.clip_seconds)
    stream = BalancedStream(
        data.view,
        data.table,
        StreamConfig(
            seed=1, steps_per_epoch=5, batch_size=4, rank=rank, world_size=2, workers=1, shuffle_buffer=8
        ),
    )
    batch = next(iter(stream))
    parts = build_parts(cfg, data.embed_dim, data.view.sample_rate, torch.device("cpu"), rank, 2)
    parts.student.eval()  # BatchNorm with running statistics: per-rank batch statistics would differ
    batch_loss(parts, batch, augment=False).backward()
    grads = {k: p.grad for k, p in parts.student.named_parameters()}
    torch.save({"batch": batch, "grads": grads}, Path(out) / f"rank{rank}.pt")
    train(cfg, progress=False, rank=rank, world_size=2)  # the real loop under DDP, to the end
    torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one_process_on_the_global_batch(work, tmp_path):
    # fork: the children start with torch already imported (spawn would re-import it twice)
    mp.start_processes(
        _ddp_worker,
        args=(str(work), str(tmp_path), str(tmp_path / "init")),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(r0["batch"]["row"], r1["batch"]["row"])  # each rank has its own half
    cfg = tiny_cfg(work, tmp_path / "single", mixup_alpha=0.0)
    parts = build_parts(cfg, 8, 8000, torch.device("cpu"))
    parts.student.eval()
    both = {k: torch.cat([r0["batch"][k], r1["batch"][k]]) for k in ("audio", "target", "cluster")}
    batch_loss(parts, both, augment=False).backward()
    # DDP averages the two halves' gradients (gloo all-reduce): the same sums in another order,
    # so per tensor, relative to its norm (measured <= 1.2e-6; elementwise, a near-zero entry's
    # rounding would count)
    for name, p in parts.student.named_parameters():
        for r in (r0, r1):
            diff = (r["grads"][name].double() - p.grad.double()).norm() / p.grad.double().norm()
            assert diff < 1e-4, (name, diff.item())
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["result"]["steps"] == 5 and result["identity"]["world_size"] == 2
    ckpt = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    assert len(ckpt["rng"]) == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
