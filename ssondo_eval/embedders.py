"""What can be evaluated: anything that maps a task's clips to one embedding each (N, D).

- :class:`StudentEmbedder`: a trained student (``RUN`` or its ``student.pt``); backbone embedding of
  each TS window (default 10 s, the students' training input), mean over windows.
- :class:`TeacherEmbedder`: a teacher run live (``build_teacher``) with the cache's own windowing
  (``windows.cut_windows`` + ``window_embed.WindowEmbedder``: frames pooled over time per window), mean
  over windows.
- ``cached_teacher.CachedTeacherEmbedder`` (its own module): clip embeddings read straight from an
  existing teacher cache, for tasks whose audio is the packed corpus (items matched by key, or by
  source file).
- :class:`LogMelStatsEmbedder`: mean and standard deviation of log-mel bands, the baseline a model
  must beat for a task to say anything.

:func:`embed_task` computes a (model, task) pair once and caches it on disk as
``CACHE/<cache_id>/<task>-<task fingerprint>.npy`` with a JSON note (what made it, how long it
took, peak memory, how many window embeddings), so re-running a report is cheap.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ssondo_cache import lifecycle
from ssondo_cache.atomic import write_bytes, write_json
from ssondo_cache.provenance import code_version, now_iso, sha256_file
from ssondo_cache.windows import TemporalSupport, cut_windows, format_seconds
from ssondo_eval.tasks.audio import iter_task_audio
from ssondo_eval.tasks.base import Task


@dataclass
class ComputeStats:
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    memory_kind: str = ""  # what the peak measures (cuda allocator / process RSS)
    n_embeddings: int = 0  # window embeddings computed (the temporal-support cost)
    n_forwards: int = 0  # model calls they took (batches)
    extra: dict = field(default_factory=dict)


class Embedder:
    """Base: ``embed_task(task) -> (N, D) float32`` plus identity for reports and caches."""

    kind: str = ""  # student | teacher | baseline
    name: str = ""  # column label in reports
    cache_id: str = ""  # filesystem-safe identity of weights + settings
    teacher_id: str | None = None  # a student's teacher, or a teacher's own id
    device: torch.device = torch.device("cpu")

    def embed_task(self, task: Task, progress: bool = True) -> tuple[np.ndarray, ComputeStats]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "cache_id": self.cache_id,
            "teacher_id": self.teacher_id,
        }


# ---------------------------------------------------------------- measuring compute
@contextmanager
def measure(device: torch.device, stats: ComputeStats) -> Iterator[None]:
    """Wall time and peak memory of the block: the CUDA allocator's peak on a GPU; on the CPU the
    process's peak resident set (VmHWM, reset first through /proc/self/clear_refs; without /proc it is
    the process's max RSS since start, from ``resource``, and says so)."""
    cuda = device.type == "cuda"
    reset = False
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
    t0 = time.perf_counter()
    yield
    if cuda:
        torch.cuda.synchronize(device)
    stats.seconds += time.perf_counter() - t0
    if cuda:
        stats.peak_memory_bytes = int(torch.cuda.max_memory_allocated(device))
        stats.memory_kind = "cuda max_memory_allocated"
    elif reset:
        m = re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())
        stats.peak_memory_bytes = int(m.group(1)) * 1024 if m else None
        stats.memory_kind = "process peak RSS (VmHWM, reset before)"
    else:
        import resource

        stats.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        stats.memory_kind = "process max RSS since start (not resettable here)"


# ---------------------------------------------------------------- windowed models
def student_windows(audio: torch.Tensor, win: int, min_len: int) -> torch.Tensor:
    """(S,) -> (n, L) student windows: a clip no longer than ``win`` is one window of the whole clip
    (zero-padded only up to ``min_len``, not to ``win``: silence would dilute the mean-pooled backbone
    features); a longer one is cut at 0, win, 2 win, ... with the last window ending at the clip's end."""
    length = audio.shape[-1]
    if length <= win:
        return torch.nn.functional.pad(audio, (0, max(0, min_len - length)))[None]
    starts = [*range(0, length - win, win), length - win]
    return torch.stack([audio[s : s + win] for s in starts])


PENDING_BYTES = 64 * 2**20  # audio held back in length buckets at most (then the fullest one runs)


def _mean_over_windows(
    task: Task,
    sample_rate: int,
    cut,
    forward,
    batch_size: int,
    device: torch.device,
    stats: ComputeStats,
    progress: bool,
    desc: str,
) -> np.ndarray:
    """Cut every clip into windows with ``cut((S,)) -> (n, L)``, run ``forward((n, L)) -> (n, D)`` in
    batches of equal-length windows, mean per clip.

    Windows wait in one bucket per length L until it holds ``batch_size`` of them: a task whose clip
    lengths alternate (short clips are one window of their own length) still runs full batches, where
    batching consecutive clips only ran one forward per change of length. Buckets hold at most
    ``PENDING_BYTES`` of audio; past it, the fullest runs. A task of one length batches as before."""
    out: list[np.ndarray | None] = [None] * len(task.items)
    buckets: dict[int, list[tuple[int, torch.Tensor]]] = {}  # L -> [(row, windows (n, L))]
    held: dict[int, int] = {}  # L -> windows waiting

    def flush(length: int) -> None:
        rows, wins = zip(*buckets.pop(length), strict=True)
        del held[length]
        x = torch.cat(wins).to(device)  # (sum n, L); one long clip may hold more than batch_size windows
        emb = torch.cat([forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])  # (sum n, D)
        stats.n_embeddings += emb.shape[0]
        stats.n_forwards += -(-len(x) // batch_size)
        for row, part in zip(rows, emb.split([len(w) for w in wins]), strict=True):
            out[row] = part.float().mean(dim=0).cpu().numpy()

    with torch.inference_mode():
        audio_iter = iter_task_audio(task, sample_rate)
        for row, audio in tqdm(
            audio_iter, total=len(task.items), desc=desc, disable=not progress, leave=False
        ):
            lifecycle.raise_if_stopped(f"{desc} abandoned; the tasks embedded before are cached")
            windows = cut(torch.from_numpy(audio))  # (n, L)
            length = windows.shape[1]
            if length in held and held[length] + len(windows) > batch_size:
                flush(length)
            buckets.setdefault(length, []).append((row, windows))
            held[length] = held.get(length, 0) + len(windows)
            if held[length] >= batch_size:
                flush(length)
            elif sum(n * L for L, n in held.items()) * windows.element_size() > PENDING_BYTES:
                flush(max(held, key=held.get))
        for length in list(buckets):
            flush(length)
    return np.stack(out).astype(np.float32)


class TeacherEmbedder(Embedder):
    kind = "teacher"

    def __init__(
        self,
        spec: str,
        checkpoint: str | Path | None = None,
        ts: float | str | None = 10.0,
        hop: float | str | None = None,
        device: str = "cpu",
        batch_size: int = 32,
        teacher=None,
        **options,
    ) -> None:
        """``teacher``: an already built teacher (the TS sweep builds it once for every TS)."""
        from ssondo_cache.devices import resolve_device
        from ssondo_cache.teachers import build_teacher
        from ssondo_cache.window_embed import WindowEmbedder

        self.device = resolve_device(device)
        self.teacher = teacher or build_teacher(spec, checkpoint=checkpoint, device=device, **options)
        if self.teacher.cpu_only:  # "auto" keeps a CPU-only teacher (onnxruntime) on the CPU
            self.device = torch.device("cpu")
        self.support = TemporalSupport.parse(ts, hop)
        self.batch_size = batch_size
        self.checkpoint, self.options = checkpoint, options  # what rebuilds it (ssondo eval's command)
        self.window_embedder = WindowEmbedder(self.teacher, self.device, batch_size, compile=False)
        self.teacher_id = self.teacher.teacher_id
        self.name = f"teacher:{self.teacher.name}"
        self.cache_id = f"{self.teacher_id}-{self.support.name}"

    def embed_task(self, task: Task, progress: bool = True) -> tuple[np.ndarray, ComputeStats]:
        sr = self.teacher.sample_rate
        win, hop = self.support.in_samples(sr) or (None, None)
        stats = ComputeStats()
        run_on = torch.device("cpu") if getattr(self.teacher, "cpu_only", False) else self.device
        with measure(run_on, stats):
            X = _mean_over_windows(
                task,
                sr,
                lambda a: cut_windows(a, win, hop),
                self.window_embedder,
                self.batch_size,
                run_on,
                stats,
                progress,
                f"{self.name} {self.support.name} {task.name}",
            )
        stats.extra = {"precision": self.window_embedder.precision}
        return X, stats

    def describe(self) -> dict:
        return {
            **super().describe(),
            "ts": self.support.ts,
            "hop": self.support.hop,
            "teacher": self.teacher.describe(),
            "spec": getattr(self.teacher, "spec", None),
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "options": {k: str(v) for k, v in self.options.items()},
        }


def student_file(run_or_file: str | Path) -> Path:
    path = Path(run_or_file)
    path = path / "student.pt" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(
            f"no student checkpoint at {path} (give a RUN folder holding student.pt, or the file)"
        )
    return path


MIN_STUDENT_SECONDS = 1.0  # shorter clips are zero-padded to this (the mel front-end needs whole frames)


class StudentEmbedder(Embedder):
    """Backbone embedding per window of ``ts`` seconds (see :func:`student_windows`), mean over windows."""

    kind = "student"

    def __init__(
        self,
        run: str | Path,
        ts: float = 10.0,
        device: str = "cpu",
        batch_size: int = 32,
        name: str | None = None,
    ) -> None:
        from ssondo_cache.devices import resolve_device
        from ssondo_distill.checkpoint import load_student

        self.path = student_file(run)
        self.device = resolve_device(device)
        self.model, self.meta = load_student(self.path, map_location=self.device)
        self.model.eval()
        self.ts = float(ts)
        self.batch_size = batch_size
        self.teacher_id = self.meta.get("teacher_id")
        cfg = self.meta.get("student")
        student_name = cfg.get("name", "student") if isinstance(cfg, dict) else str(cfg or "student")
        run_name = self.path.parent.name if self.path.name == "student.pt" else self.path.stem
        self.name = name or f"student:{run_name}"
        self.cache_id = f"student-{student_name}-{sha256_file(self.path)[:12]}-ts{format_seconds(self.ts)}"

    def embed_task(self, task: Task, progress: bool = True) -> tuple[np.ndarray, ComputeStats]:
        sr = int(self.model.sample_rate)
        win, min_len = round(self.ts * sr), round(MIN_STUDENT_SECONDS * sr)
        stats = ComputeStats()
        with measure(self.device, stats):
            X = _mean_over_windows(
                task,
                sr,
                lambda a: student_windows(a, win, min_len),
                self.model.embed,
                self.batch_size,
                self.device,
                stats,
                progress,
                f"{self.name} {task.name}",
            )
        return X, stats

    def describe(self) -> dict:
        return {
            **super().describe(),
            "checkpoint": str(self.path),
            "ts": self.ts,
            "student": self.meta.get("student"),
            "frontend": self.meta.get("frontend"),
            "meta": {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float, bool))},
        }


class LogMelStatsEmbedder(Embedder):
    """Mean and std over time of log-mel bands (25 ms window, 10 ms hop): 2 x n_mels values per clip."""

    kind = "baseline"

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64) -> None:
        import torchaudio

        self.sample_rate, self.n_mels = sample_rate, n_mels
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=round(0.025 * sample_rate),
            hop_length=round(0.010 * sample_rate),
            n_mels=n_mels,
            power=2.0,
        )
        self.name = "log-mel stats"
        self.cache_id = f"logmel-sr{sample_rate}-m{n_mels}"

    def embed_task(self, task: Task, progress: bool = True) -> tuple[np.ndarray, ComputeStats]:
        stats = ComputeStats()
        rows = []
        with measure(self.device, stats), torch.inference_mode():
            for _, audio in tqdm(
                iter_task_audio(task, self.sample_rate),
                total=len(task.items),
                desc=f"log-mel {task.name}",
                disable=not progress,
                leave=False,
            ):
                lifecycle.raise_if_stopped(
                    f"log-mel {task.name} abandoned; the tasks embedded before are cached"
                )
                logmel = torch.log(self.mel(torch.from_numpy(audio)) + 1e-6)  # (n_mels, T)
                rows.append(torch.cat([logmel.mean(dim=1), logmel.std(dim=1, correction=0)]).numpy())
                stats.n_embeddings += 1
        return np.stack(rows).astype(np.float32), stats


# ---------------------------------------------------------------- the on-disk cache
def embedding_paths(cache_dir: str | Path, embedder: Embedder, task: Task) -> tuple[Path, Path]:
    base = Path(cache_dir) / embedder.cache_id / f"{task.name}-{task.fingerprint()[:12]}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def embed_task(
    embedder: Embedder, task: Task, cache_dir: str | Path, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """(N, D) embeddings of ``task`` by ``embedder``, computed once and then read from ``cache_dir``."""
    npy, note = embedding_paths(cache_dir, embedder, task)
    if npy.is_file() and note.is_file():
        X = np.load(npy)
        if X.shape[0] == len(task.items):
            return X, json.loads(note.read_text())
    X, stats = embedder.embed_task(task, progress=progress)
    if X.shape[0] != len(task.items) or not np.isfinite(X).all():
        raise RuntimeError(
            f"{embedder.name} gave bad embeddings for {task.name}: shape {X.shape}, "
            f"finite={bool(np.isfinite(X).all())}"
        )
    buf = io.BytesIO()
    np.save(buf, X.astype(np.float32))
    info = {
        "embedder": embedder.describe(),
        "task": task.describe(),
        "shape": list(X.shape),
        "compute": {
            "seconds": stats.seconds,
            "peak_memory_bytes": stats.peak_memory_bytes,
            "memory_kind": stats.memory_kind,
            "n_embeddings": stats.n_embeddings,
            "n_forwards": stats.n_forwards,
            **stats.extra,
        },
        "device": str(embedder.device),
        "created": now_iso(),
        "code_version": code_version(),
    }
    write_bytes(npy, buf.getvalue())
    write_json(note, info)  # written last: the pair is complete only when the note exists
    return X, info
