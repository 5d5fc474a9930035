"""The server's scheduler: the engine's synchronous `Scheduler`, stepped by one background thread
while there is work, with requests submitted and cancelled from the event loop."""
from __future__ import annotations

import logging
import threading

import torch

from ..engine.jobs import Job, SchedulerStopped
from ..engine.scheduler import Scheduler

log = logging.getLogger("hastelm.server")


class ServingScheduler(Scheduler):
    """`threads`: torch's compute threads on the scheduler thread (None: leave torch's setting).
    OpenMP's team size is per thread, so it is set where the forwards run (see server/cli.py)."""

    def __init__(self, *args, threads: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1")
        self.threads = threads
        self.failure: str | None = None      # why the thread ended, if it crashed
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="hastelm-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self.lock:
            self._stopping = True
            self.lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, jobs: list[Job]) -> None:
        with self.lock:
            if self._stopping or not self.alive:
                raise SchedulerStopped(self.failure or "the server is shutting down")
            super().submit(jobs)

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            while True:
                with self.lock:
                    while not self._stopping and not self.has_work:
                        self.lock.wait()
                    if self._stopping:
                        break
                self.step()
        except BaseException:    # only a bug gets here; every waiting request is answered below
            log.exception("the scheduler thread crashed")
            self.failure = "the server cannot generate (internal error); it must be restarted"
            raise
        finally:
            self.fail_all(SchedulerStopped(self.failure or "the server is shutting down"))
