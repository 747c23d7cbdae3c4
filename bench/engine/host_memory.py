"""Keep freed host memory in the process instead of handing it back to the kernel at every step.

glibc's allocator returns large freed blocks to the kernel (``munmap``, heap trimming), so the
next step's gradients, logits and activations arrive on fresh pages that the kernel must fault in
and zero: on a CPU run of SmolLM2-135M about 55-120 thousand page faults per optimizer step,
5-15% of the step (``docs/perf.md``). ``keep_freed_memory`` raises glibc's mmap threshold to
1 GiB (blocks up to that size come from the heap and are reused), its trim threshold to 2 GiB and
its top pad to 256 MiB (freed heap memory stays in the process). What is kept was in use at the
peak: the quickstart's trials peaked at 4.9-10.1 GiB with it, 5.1-10.2 GiB without. Numerics are
untouched. A no-op off glibc (macOS, musl) and when ``ISOBENCH_KEEP_FREED_MEMORY=0``.

What is kept must not outlive a run: a Ray worker that runs one trial after another would start
each with the memory the trial before it freed, and its peak would be that trial's plus its own
(a MoFO trial after two others peaked at 9.9 GiB, 3.6 GiB above a first trial). ``hand_back``
(``gc.collect`` then glibc's ``malloc_trim(0)``, which returns every free page of every arena)
runs before a run starts counting its peak.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
MMAP_THRESHOLD = 1 << 30
TRIM_THRESHOLD = (1 << 31) - 1
TOP_PAD = 256 << 20

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's allocator once per process; True when it was tuned."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("ISOBENCH_KEEP_FREED_MEMORY", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(option, value) == 1 for option, value in
                ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done


def hand_back() -> bool:
    """Collect garbage and return every free page to the kernel (glibc ``malloc_trim(0)``), so the
    process holds what is still in use only; True when glibc did so."""
    gc.collect()
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
