"""Keep freed memory for the next batch instead of handing it back to the OS (glibc's malloc only).

By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh mmap and unmaps it on
free, and trims freed memory at the heap top; a CPU forward then page-faults its activation maps in anew on every
batch (one 128-image map of a CIFAR ResNet's first stage is 33.5 MiB). Raising both thresholds to 1 GiB lets the
heap reuse those blocks. Measured on the 2-core CPU: a forward of SDNet-18 on 128 CIFAR images went from
1.06-1.66 s to 0.69-0.73 s, with 10x fewer page faults and 100-150 MiB more peak memory; bench/throughput.py's
clean evaluation went from 111-139 to 171-186 images/s.
torch has no allocator setting for CPU tensors, so this is done here, once, by the command-line entry point
(and the benches, which say so); a library import never changes it. ROBUSTLAB_MALLOC=system leaves it alone.
"""
from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30

_state = "system"


def keep_freed_memory() -> str:
    """Raise glibc's mmap and trim thresholds to 1 GiB where possible; returns the allocator in use, in words."""
    global _state
    if os.environ.get("ROBUSTLAB_MALLOC", "") == "system" or not sys.platform.startswith("linux"):
        return _state
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a libc without mallopt
        return _state
    if mallopt(M_MMAP_THRESHOLD, KEEP_BYTES) and mallopt(M_TRIM_THRESHOLD, KEEP_BYTES):
        _state = "glibc, freed memory kept (mmap and trim thresholds 1 GiB)"
    return _state


def allocator_in_use() -> str:
    """What the run's manifest records about the C allocator."""
    return _state
