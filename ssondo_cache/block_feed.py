"""Which blocks of a cache this process computes, when several jobs run on one workspace.

Of its rank's blocks (k % world_size == rank), a process computes those not done and not claimed
by a live job: a feeder thread claims them one at a time (``claims.try_claim``: a file
``<cache>.claims/block-NNNNNN.json`` with host, pid and a heartbeat), a few ahead of the device,
re-checks ``done`` after each claim (another job may have finished the block between the two
reads) and hands the block to the decode workers through a queue. A claim is released once its
block is written and marked done. When every block left is claimed by another job, the process
waits for them (its rank is complete only when they are) and takes over a claim that goes stale
(its owner killed: at once on this host, after ``claims.STALE_AFTER`` without a heartbeat from
another host). A double-submitted job thus splits the blocks instead of repeating them, and the
cache is bit-identical either way: a block's bytes do not depend on who computes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from ssondo_cache import lifecycle
from ssondo_cache.claims import STALE_AFTER, Claim, read_claim, try_claim
from ssondo_cache.extract_items import BlockWork, Resampler, block_items
from ssondo_cache.store import CacheStore

log = logging.getLogger("ssondo.extract")
WAIT_POLL = 1.0  # seconds between looks at blocks claimed by other jobs


def claims_dir(store: CacheStore) -> Path:
    """``WORK/cache/<teacher_id>/<ts>.claims``: beside the zarr store, not in it."""
    return store.path.with_name(store.path.stem + ".claims")


def unit(block: int) -> str:
    return f"block-{block:06d}"


class QueuedBlocks(IterableDataset):
    """Decoded items of the blocks taken from ``blocks_queue`` (None ends a worker), each block by
    one worker, in order (``extract_items.block_items``)."""

    def __init__(self, blocks: dict[int, BlockWork], resample: tuple[int, int] | None, q: Any) -> None:
        self.blocks, self.resample, self.queue = blocks, resample, q

    def __iter__(self) -> Iterator[dict[str, Any]]:
        resampler = Resampler(*self.resample) if self.resample else None
        while (k := self.queue.get()) is not None:
            yield from block_items(self.blocks[k], resampler)


class BlockFeed:
    """Claims blocks of ``todo`` and puts them on ``queue``; at most ``ahead`` claimed blocks are
    waiting to be written at any time. ``finished(k)`` releases block k's claim."""

    def __init__(
        self,
        store: CacheStore,
        todo: list[int],
        q: Any,
        n_consumers: int,
        ahead: int,
        stale_after: float = STALE_AFTER,
    ) -> None:
        self.store, self.todo, self.queue, self.n_consumers = store, list(todo), q, n_consumers
        self.stale_after = stale_after
        self.folder = claims_dir(store)
        self.claims: dict[int, Claim] = {}
        self.taken: list[int] = []  # blocks handed to the workers, in order
        self._slots = threading.Semaphore(ahead)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True, name="claim blocks")
        self.error: BaseException | None = None

    def start(self) -> BlockFeed:
        self._thread.start()
        return self

    def _stopping(self) -> bool:
        return self._closing.is_set() or lifecycle.stop_requested() is not None

    def _feed(self) -> None:
        try:
            self._claim_all()
        except BaseException as err:  # reported by close(); the workers are told to end below
            self.error = err
        finally:
            for _ in range(self.n_consumers):
                self.queue.put(None)

    def _claim_all(self) -> None:
        pending = list(self.todo)
        while pending and not self._stopping():
            done = self.store.done()
            pending = [k for k in pending if not done[k]]
            for k in list(pending):
                while not self._slots.acquire(timeout=0.2):
                    if self._stopping():
                        return
                claim = try_claim(self.folder, unit(k), self.stale_after)
                if claim is not None and self.store.done()[k]:  # finished while we looked
                    claim.release()
                    claim = None
                if claim is None:
                    self._slots.release()
                    continue
                with self._lock:
                    self.claims[k] = claim
                self.taken.append(k)
                pending.remove(k)
                log.info("block %d: claimed, computing it", k)
                self.queue.put(k)
            done = self.store.done()
            pending = [k for k in pending if not done[k]]
            if pending:  # every block left is another job's: wait for it, or for its claim to go stale
                owners = sorted({_owner(self.folder / f"{unit(k)}.json") for k in pending})
                log.info(
                    "%d blocks claimed by other jobs (%s): waiting for them", len(pending), ", ".join(owners)
                )
                self._wait()

    def _wait(self) -> bool:
        return self._closing.wait(WAIT_POLL)

    def finished(self, block: int) -> None:
        """Block ``block`` is written and marked done: release its claim, let the next one be claimed."""
        with self._lock:
            claim = self.claims.pop(block, None)
        if claim is not None:
            claim.release()
            self._slots.release()

    def close(self) -> None:
        """Stop claiming and release every claim still held (their blocks are not done: others may
        take them). Re-raises what made the feeder fail."""
        self._closing.set()
        if self._thread.is_alive() or self._thread.ident is not None:
            self._thread.join()
        with self._lock:
            held, self.claims = list(self.claims.values()), {}
        for claim in held:
            claim.release()
        if self.error is not None:
            raise self.error


def _owner(path: Path) -> str:
    info = read_claim(path) or {}
    return f"{info.get('host', '?')} pid {info.get('pid', '?')}"
