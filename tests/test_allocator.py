"""robustlab/allocator.py: the command line keeps freed memory for reuse (glibc); test_cli checks the manifest."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

# 20 blocks of 64 MiB, each written then freed: page faults counted by the kernel, not timed
PROBE = """
import resource, sys, torch
from robustlab.allocator import keep_freed_memory
state = keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 << 20).fill_(1.0)
print(state)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def probe(env_malloc: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "ROBUSTLAB_MALLOC"}
    if env_malloc:
        env["ROBUSTLAB_MALLOC"] = env_malloc
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env)
    state, faults = out.stdout.split("\n")[:2]
    return state, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    kept, kept_faults = probe(None)
    system, system_faults = probe("system")
    assert kept.startswith("glibc")
    assert system == "system"
    per_block = (64 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert system_faults >= 19 * per_block, "glibc's defaults map every 64 MiB block anew"
    # kept: the heap grows once (2-3 blocks' worth of faults, run to run), then reuses its memory
    assert kept_faults <= 5 * per_block, "a kept block is faulted in once, then reused"

