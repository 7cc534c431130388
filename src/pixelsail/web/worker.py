"""One thread runs every model job, fed by a bounded queue: memory and CPU stay bounded however many people click.

A full queue is refused at once with 503 and a Retry-After estimate (the queue's length times the recent mean job
time), so a burst of requests gets quick, honest answers instead of piling up.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from typing import Any, Callable

from pixelsail.web.errors import HttpError

EMA_WEIGHT = 0.2  # weight of the newest job in the running mean job time


class Worker:
    """``submit(fn)`` runs ``fn`` on the worker thread and returns its result (or raises its exception)."""

    def __init__(self, queue_size: int, timeout_s: float):
        self.timeout_s = timeout_s
        self.mean_job_s = 0.5
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="pixelsail-model-worker", daemon=True)
        self._thread.start()

    def retry_after_s(self) -> int:
        """Seconds until the queue has probably drained (at least 1)."""
        return max(1, math.ceil((self._queue.qsize() + 1) * self.mean_job_s))

    def submit(self, fn: Callable[[], Any]) -> Any:
        job = {"fn": fn, "done": threading.Event(), "result": None, "error": None}
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            retry = self.retry_after_s()
            raise HttpError(503, f"the server is busy (request queue full); try again in {retry} s",
                            retry_after=retry) from None
        if not job["done"].wait(self.timeout_s):
            raise HttpError(504, f"the request took longer than {self.timeout_s:.0f} s")
        if job["error"] is not None:
            raise job["error"]
        return job["result"]

    def stop(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            t0 = time.perf_counter()
            try:
                job["result"] = job["fn"]()
            except BaseException as e:  # noqa: BLE001 - handed back to the requesting thread
                job["error"] = e
            finally:
                self.mean_job_s += EMA_WEIGHT * (time.perf_counter() - t0 - self.mean_job_s)
                job["done"].set()
