"""Keep freed heap memory in a packing process instead of giving it back to the kernel after every clip.

Packing one 10-s clip allocates and frees ~10 MB of short-lived buffers (source bytes, decoded float32,
downmix, resampled, int16, encoded member). With glibc's defaults the freed top of the heap is trimmed
(returned to the kernel) as soon as it passes 128 KiB, so the next clip faults the same pages in again:
on the 2-core EPYC VM a profile put that page-faulting at ~2-3 CPU ms per clip, which the timed benchmark
did not confirm (within its noise; docs/results/pack.md).
``M_TOP_PAD`` makes glibc keep that much free memory at the top of the heap when it trims (and ask for
that much extra when it grows). It changes no computed value, only where buffers live; other C libraries
have no ``mallopt`` and are left as they are. A user's own ``MALLOC_TOP_PAD_`` wins.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

M_TOP_PAD = -2  # glibc's mallopt parameter number (malloc.h)
TOP_PAD = 64 << 20  # bytes kept: a few clips' worth of buffers, also for clips longer than 10 s
DEFAULT_TOP_PAD = 128 << 10  # glibc's default (mallopt(3))


def _mallopt():  # the C function, or None where the C library has none (musl, macOS)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def set_top_pad(nbytes: int) -> bool:
    """``mallopt(M_TOP_PAD, nbytes)``; False where it is not available or the user set MALLOC_TOP_PAD_."""
    fn = _mallopt()
    if fn is None or "MALLOC_TOP_PAD_" in os.environ:
        return False
    return bool(fn(M_TOP_PAD, int(nbytes)))


@contextmanager
def heap_kept(nbytes: int = TOP_PAD) -> Iterator[None]:
    """Within the block, keep ``nbytes`` of freed heap; glibc's default again afterwards (for a caller
    that runs ``pack`` inside a longer-lived process)."""
    changed = set_top_pad(nbytes)
    try:
        yield
    finally:
        if changed:
            set_top_pad(DEFAULT_TOP_PAD)


def init_worker() -> None:
    """Pool initializer: a worker process packs for its whole life."""
    set_top_pad(TOP_PAD)
