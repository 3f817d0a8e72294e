"""Micro-batching: concurrent requests share one trip through the sandbox pool.

RL clients send one request per sample, all at once (OpenRLHF: a 512-sample step is 512
concurrent requests). Each request here only appends its items to the open batch; the
batch closes `window_s` after its first item arrives (or at `max_items`) and is scored by
one `score_async` call: identical (completion, truth) pairs across requests run once, the
pool's queue stays full, and no thread is held per request. Several batches may be in
flight at once, so a slow batch never stalls the next.
"""

from __future__ import annotations

import asyncio

from echo_nemo.reward.sandbox import WorkerPool
from echo_nemo.reward.score import Score, score_async


class MicroBatcher:
    """``await batcher.score(completions, truths)`` -> this request's Scores, in order."""

    def __init__(self, pool: WorkerPool, window_s: float = 0.005, max_items: int = 2048) -> None:
        self.pool = pool
        self.window_s = window_s
        self.max_items = max_items
        self._pending: list[tuple[list[str], list[object], asyncio.Future]] = []
        self._items = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self.batches = 0
        self.requests = 0

    async def score(self, completions: list[str], ground_truths: list[object]) -> list[Score]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((completions, ground_truths, future))
        self._items += len(completions)
        if self._items >= self.max_items:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, self._items = self._pending, [], 0
        if batch:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)  # keep a reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[list[str], list[object], asyncio.Future]]) -> None:
        completions = [c for comps, _, _ in batch for c in comps]
        truths = [t for _, ts, _ in batch for t in ts]
        self.batches += 1
        self.requests += len(batch)
        try:
            scores = await score_async(completions, truths, self.pool)
        except Exception as e:  # e.g. the pool closed under us: every request gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for comps, _, future in batch:
            if not future.done():  # a client that went away cancelled its future
                future.set_result(scores[start : start + len(comps)])
            start += len(comps)

    def info(self) -> dict:
        return {"batches": self.batches, "requests": self.requests}
