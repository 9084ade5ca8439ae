"""Packing throughput (FLAC vs WAV shards) and per-core decode throughput reading the shards back.

    python benchmarks/pack.py                       # generates its own corpus (tones + noise)
    python benchmarks/pack.py --input demo-out/data --workers 2
    python benchmarks/pack.py --clock cpu --input-format wav --stages --no-old   # issue 17's figures

``--stages`` adds where pack's time goes per clip (CPU ms of this process, each library step of
planning and building one clip timed alone on the same files); ``--clock cpu`` counts CPU seconds,
the figure that means something while other jobs share the cores.

Baselines measured in the same run: packing is compared with just decoding the inputs
(soundfile, no resample/encode/write; issue 17's target: pack >= 0.7x of it) and with packing as
before (torchaudio's resample, 1 process, ``--no-old`` skips it); reading shards back is compared
with reading the tar members without decoding them, and FLAC with WAV.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import soundfile as sf
import torch

from ssondo_cache.audio import AUDIO_EXTENSIONS
from ssondo_cache.pack import pack
from ssondo_cache.plan import PackParams, make_plan
from ssondo_cache.shards import encode_audio, iter_members, iter_shard


def make_corpus(root: Path, n: int, seconds: float, sr: int, ext: str = "flac") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for i in range(n):
        x = 0.3 * np.sin(2 * np.pi * (200 + 10 * i) * t)[:, None] + 0.05 * rng.standard_normal((len(t), 2))
        sf.write(root / f"clip{i:05d}.{ext}", x.astype(np.float32), sr, subtype="PCM_16")
    return root


def stage_times(files: list[Path], sample_rate: int) -> dict[str, float]:
    """CPU ms per clip of each step pack takes for a whole-file clip, timed alone with the library's own
    functions (whatever commit is on the path): plan scan, source read + hash, decode, downmix,
    resample, int16, encode, checksum, tar member."""
    from ssondo_cache import audio as A
    from ssondo_cache.plan import _scan
    from ssondo_cache.shards import ShardWriter, member_checksum

    out: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.process_time()
        value = fn()
        out[name] = out.get(name, 0.0) + (time.process_time() - t0) * 1e3 / len(files)
        return value

    for f in files:
        timed("plan: sha256 + header (once per input)", lambda f=f: _scan(str(f)))
        data = timed("build: read the source", f.read_bytes)
        timed("build: sha256 of the source", lambda data=data: hashlib.sha256(data).hexdigest())
        frames = sf.info(str(f)).frames
        x, sr = timed("decode", lambda data=data, frames=frames: A.decode_segment(data, 0, frames))
        mono = timed("downmix", lambda x=x: A.to_mono(x))
        y = timed(
            f"resample {sr} -> {sample_rate}", lambda mono=mono, sr=sr: A.resample(mono, sr, sample_rate)
        )
        pcm = timed("int16 + peak", lambda y=y: (A.to_pcm16(y), float(np.abs(y).max()))[0])
        for fmt in ("flac", "wav"):
            enc = timed(f"encode {fmt}", lambda pcm=pcm, fmt=fmt: encode_audio(pcm, sample_rate, fmt))
            timed(f"crc32c {fmt}", lambda enc=enc: member_checksum(enc))
        w = ShardWriter(io.BytesIO())
        timed("tar member + json", lambda w=w, enc=enc: w.add("k", enc, "wav", {"key": "k"}))
    return out


def audio_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


# cpu: this process's CPU seconds (all threads), for a loaded machine; needs --workers 1
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_it(fn, clock=time.perf_counter) -> tuple[float, object]:
    t0 = clock()
    out = fn()
    return clock() - t0, out


def decode_inputs(files: list[Path]) -> float:
    total = 0.0
    for f in files:
        x, sr = sf.read(io.BytesIO(f.read_bytes()), dtype="float32")
        total += len(x) / sr
    return total


def read_shards(shards: list[Path], decode: bool) -> tuple[int, float]:
    n, seconds = 0, 0.0
    for s in shards:
        if decode:
            for clip in iter_shard(s):
                n += 1
                seconds += len(clip.audio) / clip.sample_rate
        else:
            for _key, _group in iter_members(s):
                n += 1
    return n, seconds


def old_resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """The resampler pack used before: torchaudio's windowed sinc (defaults), float64, one thread."""
    import torchaudio.functional as AF

    if orig_sr == new_sr:
        return x
    with torch.inference_mode():
        return AF.resample(torch.from_numpy(np.ascontiguousarray(x))[None], orig_sr, new_sr)[0].numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--input", type=Path, help="folder of audio (e.g. the demo corpus); default: generate one"
    )
    ap.add_argument("--n", type=int, default=48, help="clips to generate when --input is not given")
    ap.add_argument("--input-format", choices=["flac", "wav"], default="flac", help="of the generated clips")
    ap.add_argument("--stages", action="store_true", help="also time each step of packing one clip")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of generated clips")
    ap.add_argument("--sample-rate", type=int, default=32000, help="pack sample rate")
    ap.add_argument("--workers", type=int, default=1, help="pack worker processes")
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--no-old", action="store_true", help="skip packing with the old resampler")
    ap.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall", help="cpu: CPU seconds (loaded machine)"
    )
    args = ap.parse_args()
    if args.clock == "cpu" and args.workers != 1:
        ap.error("--clock cpu counts this process only: use --workers 1")
    timer = functools.partial(time_it, clock=CLOCKS[args.clock])
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="ssondo-bench-pack-"))
    try:
        if args.input:
            src = args.input
            corpus_desc = f"{src}"
        else:
            src = make_corpus(tmp / "in", args.n, args.seconds, 44100, args.input_format)
            corpus_desc = (
                f"generated: {args.n} x {args.seconds} s, 44.1 kHz stereo {args.input_format.upper()}"
            )
        files = audio_files(src)
        t_dec, in_seconds = timer(lambda: decode_inputs(files))
        import ssondo_cache

        print(f"code: {Path(ssondo_cache.__file__).parent}; clock: {args.clock}")
        print(f"corpus: {corpus_desc} ({len(files)} files, {in_seconds:.0f} s of audio)")
        print(f"baseline: decode inputs only, 1 process: {len(files) / t_dec:.1f} files/s")

        t_plan, plan = timer(
            lambda: make_plan([src], PackParams(args.sample_rate, "flac", args.shard_size, 0.1, 10.0, False))
        )
        print(
            f"plan (sha256 + header, no cache): {len(files) / t_plan:.1f} files/s, {len(plan.items)} clips planned"
        )

        results: dict = {"decode_files_per_s": len(files) / t_dec}
        if args.stages:
            stages = stage_times(files, args.sample_rate)
            results["stages_cpu_ms_per_clip"] = stages
            print("where the time goes, CPU ms per clip:")
            for name, ms in stages.items():
                print(f"  {name:42s} {ms:7.2f}")
        for fmt in ("flac", "wav"):
            work = tmp / f"work-{fmt}"
            t, res = timer(
                lambda fmt=fmt, work=work: pack(
                    [src],
                    work,
                    fmt=fmt,
                    sample_rate=args.sample_rate,
                    shard_size=args.shard_size,
                    workers=args.workers,
                    progress=False,
                )
            )
            shards = sorted((work / "shards").glob("clips-*.tar"))
            size = sum(p.stat().st_size for p in shards)
            t_raw, _ = timer(lambda shards=shards: read_shards(shards, decode=False))
            t_read, (n, secs) = timer(lambda shards=shards: read_shards(shards, decode=True))
            results[fmt] = {
                "pack_clips_per_s": res.n_packed / t,
                "pack_s": t,
                "clips": res.n_packed,
                "shard_mb": size / 1e6,
                "decode_clips_per_s_per_core": n / t_read,
                "decode_audio_s_per_s_per_core": secs / t_read,
                "tar_read_clips_per_s": n / t_raw,
                "pack_over_decode": (res.n_packed / t) / (len(files) / t_dec),
            }
            r = results[fmt]
            print(
                f"{fmt:4s}: pack {r['pack_clips_per_s']:7.1f} clips/s ({args.workers} worker(s), "
                f"{r['pack_s']:.1f} s, x{(res.n_packed / t) / (len(files) / t_dec):.2f} of input decode), "
                f"shards {r['shard_mb']:.1f} MB; read back {r['decode_clips_per_s_per_core']:7.1f} clips/s/core "
                f"({r['decode_audio_s_per_s_per_core']:.0f} s audio/s, x"
                f"{r['decode_clips_per_s_per_core'] / r['tar_read_clips_per_s']:.2f} of tar read without decode)"
            )
        if not args.no_old:
            for fmt in ("flac", "wav"):
                with mock.patch("ssondo_cache.audio.resample", old_resample):  # in this process only
                    t, res = timer(
                        lambda fmt=fmt: pack(
                            [src],
                            tmp / f"work-old-{fmt}",
                            fmt=fmt,
                            sample_rate=args.sample_rate,
                            shard_size=args.shard_size,
                            workers=1,
                            progress=False,
                        )
                    )
                results[fmt]["old_pack_clips_per_s"] = res.n_packed / t
                print(
                    f"{fmt:4s}: old pack (torchaudio resample, 1 process) {res.n_packed / t:7.1f} clips/s, "
                    f"x{(res.n_packed / t) / (len(files) / t_dec):.2f} of input decode; new/old "
                    f"x{results[fmt]['pack_clips_per_s'] / (res.n_packed / t):.2f}"
                    + ("" if args.workers == 1 else f" (new with {args.workers} workers)")
                )
        f, w = results["flac"], results["wav"]
        print(
            f"ratio WAV/FLAC: packing x{w['pack_clips_per_s'] / f['pack_clips_per_s']:.2f}, "
            f"decoding x{w['decode_clips_per_s_per_core'] / f['decode_clips_per_s_per_core']:.2f}, "
            f"size x{w['shard_mb'] / f['shard_mb']:.2f}"
        )
        print(
            json.dumps(
                {
                    "benchmark": "pack",
                    "corpus": corpus_desc,
                    "workers": args.workers,
                    "clock": args.clock,
                    "code": str(Path(ssondo_cache.__file__).parent),
                    **results,
                }
            )
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
