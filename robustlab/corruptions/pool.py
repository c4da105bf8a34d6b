"""Corrupting batches on a pool of CPU processes, in order, with a bounded number of batches in flight: used by
`robustlab corrupt` and by the corruptions `eval` generates. Every image is seeded by its index, so the bytes do
not depend on the number of workers."""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from types import TracebackType
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch

from robustlab.corruptions.engine import corrupt
from robustlab.errors import RobustlabError

PARENT_POLL_SECONDS = 0.5


class Job(NamedTuple):
    """A batch to corrupt: HWC uint8 images, the corruption, severity (or a suite's own level) and the index of
    the batch's first image (its seeds)."""
    images: np.ndarray
    corruption: str
    severity: int
    start: int
    param: float | None = None


def default_workers() -> int:
    """The machine's cores, shared among the ranks torchrun starts on it."""
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def _run(job: Job, parameters: str, seed: int, reencode: bool | None, device: torch.device | str = "cpu") -> np.ndarray:
    return corrupt(job.images, job.corruption, job.severity, parameters=parameters, seed=seed, start=job.start,
                   param=job.param, reencode=reencode, device=device)


def _end_with(parent: int) -> None:
    """A worker's initializer: the worker ends once `parent` is gone. A parent killed by SIGKILL stops nothing, and
    its workers would wait on the pool's queue forever, keeping their memory and (through the pipe they hold)
    multiprocessing's resource tracker. Polled rather than prctl(PR_SET_PDEATHSIG), which is Linux's only and fires
    when the thread that started the worker ends, not the process."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)
    threading.Thread(target=watch, name="robustlab-parent-watch", daemon=True).start()


class CorruptionPool:
    """Worker processes, started on first use (spawned, not forked: a forked copy of a process that already ran
    torch's OpenMP pool can hang) and stopped on exit. With one worker, or on a GPU, batches run in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> CorruptionPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def corrupted(self, jobs: Iterable[Job], *, parameters: str, seed: int, device: torch.device,
                  reencode: bool | None) -> Iterator[np.ndarray]:
        """The corrupted batches of `jobs`, in order; at most twice the workers' number of batches in flight, so
        that memory stays near a few batches however large the split."""
        if self.workers <= 1 or device.type != "cpu":
            for job in jobs:
                yield _run(job, parameters, seed, reencode, device)
            return
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_end_with, initargs=(os.getpid(),))
        pending: deque[Future[np.ndarray]] = deque()
        try:
            for job in jobs:
                pending.append(self._executor.submit(_run, job, parameters, seed, reencode))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise RobustlabError("a corruption worker process died (killed, perhaps by the kernel for lack of "
                                 "memory); run the same command again to resume, with fewer --workers if memory is "
                                 "short") from None
        finally:  # a reader that stops early (a batch limit, an error) leaves no work running for nothing
            for future in pending:
                future.cancel()
