"""One thread runs all model work, fed by two bounded queues; beyond them a client is told to come back later.

Why one thread: the face detectors (TFLite, OpenCV) and the text tower's sentence cache are not safe to call from
two threads, and on a small CPU two model calls at once are not faster than one after the other. Why two queues:
quick work (an image, a webcam frame) must not wait minutes behind a video, so a running video job hands the
thread to every waiting quick task between two of its frames (`predict`'s `on_frame` hook).

Nothing waits unbounded: a full queue raises `Busy` at once (the API answers 503 + Retry-After), and every
accepted task is answered (a result or its error), also when the server stops.
"""

from __future__ import annotations

import secrets
import shutil
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Busy(Exception):
    """The queue is full; `retry_after` seconds is a fair time to try again."""

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(f"the server is busy ({what} full); retry in {retry_after} s")
        self.retry_after = retry_after


class Cancelled(Exception):
    """Raised inside a job's frame hook to stop it (the client deleted the job, or the server is stopping)."""


@dataclass
class Job:
    """A long task (a video) run by the worker; `run(on_frame)` returns the result, `folder` is removed after."""

    kind: str
    name: str  # the upload's display name
    run: Callable[[Callable[[], None]], Any]
    total: int | None = None  # expected frames, for the progress fraction
    folder: Path | None = None
    redact: Callable[[str], str] = str  # scrubs server paths from an error message
    id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    status: str = "queued"  # queued | running | done | failed | cancelled
    done: int = 0
    error: str | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_requested: bool = False

    def progress(self) -> dict:
        fraction = 1.0 if self.status == "done" else (min(self.done / self.total, 0.99) if self.total else None)
        return {"frames_done": self.done, "frames_expected": self.total, "fraction": fraction}

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def one_line(exc: BaseException) -> str:
    """An exception as one line for a client (the first line of its message, or its type)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Worker:
    """The model thread: `submit(fn)` (quick, -> Future) and `submit_job(job)`; `get(id)` / `cancel(id)` jobs."""

    def __init__(self, max_queue: int, max_jobs: int, max_finished: int, job_ttl_s: float, retry_after: int) -> None:
        self.max_queue, self.max_jobs, self.max_finished = max_queue, max_jobs, max_finished
        self.job_ttl_s, self.retry_after = job_ttl_s, retry_after
        self._cv = threading.Condition()
        self._quick: deque[tuple[Callable[[], Any], Future]] = deque()
        self._waiting: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every job still known, oldest first
        self._running: Job | None = None
        self._stopping = False
        self.peak_queue = 0
        self._thread = threading.Thread(target=self._loop, name="affectclip-serve-model", daemon=True)

    # ------------------------------------------------------------------------------------------- client side

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, cancel jobs, answer waiting quick tasks, join the thread, remove job folders."""
        with self._cv:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel_requested = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._cv:
            while self._quick:
                self._quick.popleft()[1].set_exception(Busy("server stopping", self.retry_after))
            for job in self._jobs.values():
                if job.status in ("queued", "running"):
                    job.status, job.error = "cancelled", "the server stopped"
                job.cleanup()

    def submit(self, fn: Callable[[], Any]) -> Future:
        """Queue quick work; raises Busy when `max_queue` tasks already wait."""
        future: Future = Future()
        with self._cv:
            if self._stopping:
                raise Busy("server stopping", self.retry_after)
            if len(self._quick) >= self.max_queue:
                raise Busy("work queue", self.retry_after)
            self._quick.append((fn, future))
            self.peak_queue = max(self.peak_queue, len(self._quick))
            self._cv.notify_all()
        return future

    def submit_job(self, job: Job) -> Job:
        """Queue a job; raises Busy (and removes its folder) when `max_jobs` jobs already wait."""
        with self._cv:
            self._forget_old()
            if self._stopping or len(self._waiting) >= self.max_jobs:
                job.cleanup()
                raise Busy("server stopping" if self._stopping else "job queue", self.retry_after * 5)
            self._waiting.append(job)
            self._jobs[job.id] = job
            self._cv.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cv:
            self._forget_old()
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Stop a job: a queued one at once, a running one at its next frame; a finished one is forgotten."""
        with self._cv:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.status == "queued":
                self._waiting.remove(job)
                job.status, job.finished = "cancelled", time.time()
                job.cleanup()
            elif job.status == "running":
                job.cancel_requested = True
            else:
                del self._jobs[job_id]
            return job

    def load(self) -> dict:
        with self._cv:
            return {"queued": len(self._quick), "queue_limit": self.max_queue, "peak_queue": self.peak_queue,
                    "jobs_waiting": len(self._waiting), "jobs_limit": self.max_jobs,
                    "job_running": self._running is not None}

    def _forget_old(self) -> None:
        """Drop finished jobs past their TTL or beyond `max_finished` (oldest first); caller holds the lock."""
        finished = [j for j in self._jobs.values() if j.finished is not None]
        now = time.time()
        for i, job in enumerate(finished):
            if now - job.finished > self.job_ttl_s or len(finished) - i > self.max_finished:
                del self._jobs[job.id]

    # ------------------------------------------------------------------------------------------- model thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._quick or self._waiting or self._stopping):
                    self._cv.wait()
                if self._quick:
                    task, job = self._quick.popleft(), None
                elif self._waiting and not self._stopping:
                    task, job = None, self._waiting.popleft()
                    job.status, self._running = "running", job
                else:
                    return
            if job is None:
                _run_task(*task)
            else:
                self._run_job(job)

    def drain(self) -> None:
        """Run every waiting quick task now (called by a running job between frames, on the model thread)."""
        while True:
            with self._cv:
                if not self._quick:
                    return
                task = self._quick.popleft()
            _run_task(*task)

    def _run_job(self, job: Job) -> None:
        def on_frame() -> None:
            job.done += 1
            if job.cancel_requested:
                raise Cancelled
            self.drain()

        try:
            result, status, error = job.run(on_frame), "done", None
        except Cancelled:
            result, status, error = None, "cancelled", "cancelled"
        except Exception as exc:  # noqa: BLE001 — a failed job reports why; the server goes on
            result, status, error = None, "failed", job.redact(one_line(exc))
        finally:
            job.cleanup()
        with self._cv:
            job.result, job.status, job.error, job.finished = result, status, error, time.time()
            self._running = None


def _run_task(fn: Callable[[], Any], future: Future) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 — handed to the waiting request, which answers with it
        future.set_exception(exc)
