"""The one thread that owns the decode engine, and the asyncio side's handle on it.

The :class:`~rotary.infer.engine.Engine` is not thread-safe, so a single background thread drives it:
each turn of its loop frees the slots of cancelled requests, admits pending rows into free slots
(``engine.start``, one prefill for all of them) and runs one decode step for every active row
(``engine.step``). A row that arrives while others decode therefore joins the running batch at the
next step instead of waiting for them to end. Events go back to the request's asyncio queue with
``loop.call_soon_threadsafe``, the only thread-safe way into an event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any

from rotary.infer.engine import Engine, Event, Request

log = logging.getLogger("rotary.infer.serve")


class QueueFull(Exception):
    """More rows pending than the server's queue holds."""


class EngineFailed(Exception):
    """The engine raised while running a row (a bug, or the device ran out of memory)."""


class Ticket:
    """The rows of one HTTP request (``n`` samples of each prompt) and the queue of their events.

    Created and consumed in the event loop; the scheduler thread only pushes into it, through
    ``loop.call_soon_threadsafe``.
    """

    def __init__(self, rows: int, loop: asyncio.AbstractEventLoop) -> None:
        self.id = next(_ids)
        self.tags = [(self.id, j) for j in range(rows)]
        self.queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.loop = loop
        self.unfinished = set(range(rows))

    def push(self, item: Event | BaseException) -> None:
        """From the scheduler thread."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down, nobody listens
            pass

    @property
    def done(self) -> bool:
        return not self.unfinished

    async def events(self) -> AsyncIterator[Event]:
        """Every event of every row, in order per row, until all rows have finished. Raises what the
        scheduler delivered instead (:class:`EngineFailed`)."""
        while self.unfinished:
            item = await self.queue.get()
            if isinstance(item, BaseException):
                raise item
            if item.finish_reason is not None:
                self.unfinished.discard(item.tag[1])
            yield item


_ids = itertools.count()


class _Job:
    __slots__ = ("ticket", "request", "slot")

    def __init__(self, ticket: Ticket, request: Request) -> None:
        self.ticket = ticket
        self.request = request
        self.slot: int | None = None  # known once started


class Scheduler:
    """Runs ``engine`` on a background thread; at most ``max_queue`` rows wait for a slot."""

    def __init__(self, engine: Engine, *, max_queue: int, warmup: bool = False) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.engine = engine
        self.max_queue = max_queue
        self.warmup = warmup
        self._cond = threading.Condition()
        self._pending: deque[_Job] = deque()  # guarded by _cond
        self._cancelled: list[Ticket] = []  # guarded by _cond
        self._running: dict[Any, _Job] = {}  # tag -> job; the scheduler thread only
        self._stop = False
        self._thread: threading.Thread | None = None
        # metrics: written by the scheduler thread, read (racily, ints only) by /metrics
        self.steps = 0
        self.batch_histogram: Counter[int] = Counter()  # active rows per decode step -> steps
        self.recent_batch_sizes: deque[int] = deque(maxlen=256)
        self.rows_started = 0
        self.rows_finished = 0
        self.rows_cancelled = 0
        self.tokens_generated = 0
        self.errors = 0

    # -- the event loop's side ------------------------------------------------------------------
    def submit(self, requests: Sequence[Request]) -> Ticket:
        """Queue the rows of one request (all or none: QueueFull); events arrive on the ticket."""
        for r in requests:
            self.engine.check(r)  # read-only, so safe off the engine's thread; fails before queueing
        ticket = Ticket(len(requests), asyncio.get_running_loop())
        for tag, r in zip(ticket.tags, requests):
            r.tag = tag
        with self._cond:
            if len(self._pending) + len(requests) > self.max_queue:
                raise QueueFull(f"{len(self._pending)} rows are waiting for a slot already (the queue holds "
                                f"{self.max_queue}); retry later")
            self._pending.extend(_Job(ticket, r) for r in requests)
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop the ticket's rows: pending ones leave the queue, running ones free their slots. A
        finished ticket is left alone."""
        if ticket.done:
            return
        with self._cond:
            self._cancelled.append(ticket)
            self._cond.notify()

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def metrics(self) -> dict[str, Any]:
        return {
            "slots": self.engine.slots, "max_len": self.engine.max_len, "active": self.engine.active,
            "pending": self.pending, "max_queue": self.max_queue, "compiled": self.engine.compiled,
            "steps": self.steps, "batch_size_histogram": {str(k): v for k, v in sorted(self.batch_histogram.items())},
            "recent_batch_sizes": list(self.recent_batch_sizes), "rows_started": self.rows_started,
            "rows_finished": self.rows_finished, "rows_cancelled": self.rows_cancelled,
            "tokens_generated": self.tokens_generated, "errors": self.errors,
        }

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self.warmup:
            self._warm_up()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="rotary-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _warm_up(self) -> None:
        """Compile the decode step at every batch size before the first client waits on it."""
        from rotary.infer.sampling import SamplingParams

        t = time.perf_counter()
        self.engine.start([Request([0], 2, SamplingParams(temperature=0))])  # the prefill path too
        while self.engine.active:
            self.engine.step()
        self.engine.warm_up()
        log.info("engine warmed up in %.1fs", time.perf_counter() - t)

    # -- the scheduler thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._pending or self._cancelled or self.engine.active):
                    self._cond.wait()
                if self._stop:
                    break
                cancelled, self._cancelled = self._cancelled, []
                if cancelled:
                    gone = {t.id for t in cancelled}
                    self._pending = deque(j for j in self._pending if j.ticket.id not in gone)
                admit = [self._pending.popleft() for _ in range(min(len(self._pending), len(self.engine.free_slots)))]
            for ticket in cancelled:
                self._cancel_running(ticket)
            if admit:
                for j in admit:
                    self._running[j.request.tag] = j
                self.rows_started += len(admit)
                self._run(admit, partial(self.engine.start, [j.request for j in admit]))
            if self.engine.active:
                self._run(list(self._running.values()), self._step)
        self._fail_all(EngineFailed("the server is shutting down"))

    def _step(self) -> list[Event]:
        events = self.engine.step()
        self.steps += 1
        self.batch_histogram[len(events)] += 1
        self.recent_batch_sizes.append(len(events))
        log.debug("decode step %d: batch size %d", self.steps, len(events))
        return events

    def _run(self, jobs: list[_Job], call: Callable[[], list[Event]]) -> None:
        """``call`` (a start or a step) and route its events; if it raises, fail ``jobs`` and free
        their slots so one bad row never stops the server."""
        try:
            events = call()
        except Exception as err:  # a bug in one batch must not end the thread
            log.exception("the engine failed")
            self.errors += 1
            self._fail(jobs, EngineFailed(f"the engine failed: {type(err).__name__}: {err}"))
            return
        for ev in events:
            job = self._running.get(ev.tag)
            if job is None:
                continue
            job.slot = ev.slot
            self.tokens_generated += 1
            if ev.finish_reason is not None:
                del self._running[ev.tag]
                self.rows_finished += 1
            job.ticket.push(ev)

    def _cancel_running(self, ticket: Ticket) -> None:
        for tag in ticket.tags:
            job = self._running.pop(tag, None)
            if job is not None:
                self.rows_cancelled += 1  # first: whoever sees the slot free also sees the count
                if job.slot is not None:
                    self.engine.cancel(job.slot)

    def _fail(self, jobs: list[_Job], err: BaseException) -> None:
        tags = {j.request.tag for j in jobs}
        for slot, row in enumerate(self.engine.rows):
            if row is not None and row.seq.tag in tags:
                self.engine.cancel(slot)
        for tag in tags:
            self._running.pop(tag, None)
        for ticket in {j.ticket.id: j.ticket for j in jobs}.values():
            ticket.push(err)

    def _fail_all(self, err: BaseException) -> None:
        with self._cond:
            jobs = list(self._pending) + list(self._running.values())
            self._pending.clear()
        self._fail(jobs, err)
