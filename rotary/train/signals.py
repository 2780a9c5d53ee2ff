"""Ctrl-C and SIGTERM during training: finish the step, save, stop; never hang in a collective."""

from __future__ import annotations

import contextlib
import signal
import time
from typing import Any


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps.

    Python runs a signal handler only between bytecodes, so a process blocked in a collective
    (a peer died or runs other collectives) would not see the signal until dist_timeout_s: killed
    torchrun workers were left running. A watcher thread hears every signal through the wakeup fd
    and ends the process when the handler has not run: after ``grace_s`` in a distributed run
    (then the main thread is blocked in a collective), 1 s after a second signal in any case.
    """

    def __init__(self, grace_s: float = 10.0) -> None:
        self.signal: int | None = None
        self.grace_s = grace_s
        self._previous: dict[int, Any] = {}
        self._handled = 0  # signals the handler ran for (read by the watcher)
        self._wakeup: tuple[int, int, int] | None = None  # read fd, write fd, previous wakeup fd

    def __enter__(self) -> StopRequest:
        import os
        import threading

        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._previous:
            r, w = os.pipe()
            os.set_blocking(w, False)  # the C-level handler must never block
            self._wakeup = (r, w, signal.set_wakeup_fd(w, warn_on_full_buffer=False))
            main = threading.main_thread().ident
            threading.Thread(target=self._watch, args=(r, main), name="rotary-signals", daemon=True).start()
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self._handled += 1
        if self.signal is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def _watch(self, fd: int, main: int | None) -> None:
        import os
        import select
        import sys

        import torch.distributed as dist

        seen, first_at, last_at, signum = 0, 0.0, 0.0, 0
        while True:
            wait = None if self._handled >= seen else 0.2
            if select.select([fd], [], [], wait)[0]:
                data = os.read(fd, 64)
                if not data:  # __exit__ closed the write end
                    os.close(fd)
                    return
                for s in data:
                    if s in (signal.SIGINT, signal.SIGTERM):
                        signum, last_at = s, time.monotonic()
                        first_at = last_at if self._handled >= seen else first_at
                        seen += 1
            if self._handled >= seen:
                continue
            now = time.monotonic()
            stuck = now - first_at >= self.grace_s and dist.is_available() and dist.is_initialized()
            if stuck or (seen >= 2 and now - last_at >= 1.0):
                frame = sys._current_frames().get(main)  # where the main thread is blocked
                where = f" in {frame.f_code.co_name} ({frame.f_code.co_filename})" if frame else ""
                name = signal.Signals(signum).name
                sys.stderr.write(f"rotary: {name} not handled for {now - first_at:.0f}s, blocked{where} "
                                 "(a collective whose peer is gone or out of step?): exiting now\n")
                sys.stderr.flush()
                os._exit(128 + signum)

    def __exit__(self, *exc: Any) -> None:
        import os

        if self._wakeup is not None:
            r, w, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(w)  # the watcher reads EOF, closes the read end and returns
            self._wakeup = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
