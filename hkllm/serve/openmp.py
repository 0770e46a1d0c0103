"""Hand back the OpenMP threads that a thread which is done with torch holds.

    release_idle_threads()     # in the thread that loaded the model, before the engine's worker starts

Each OS thread that runs a parallel torch operation gets a team of OpenMP threads of its own
(libgomp keeps one pool per calling thread). The embedded engine loads and times the model in the
server's main thread, then decodes in its worker thread: two pools. Once libgomp manages more
threads than there are CPUs it stops spinning between parallel regions and sleeps instead, and every
region then pays a futex wake-up: SmolLM2's bf16 step on two threads took 43 ms in the thread that
had run torch first and 62-68 ms (1.15 cores busy) in a second thread; with the first thread's pool
released, 42 ms on 1.99 cores (dev/LOG.md, issue 14, stop 27). OMP_WAIT_POLICY=ACTIVE is no fix: the
idle pool then spins on a core the worker needs. One-thread serving (the quickstart model) never
forms a team and is unaffected.

`omp_pause_resource_all` (OpenMP 5.0) frees the *calling* thread's pool; the next parallel region
there would build a new one.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("hkllm.serve")

_RUNTIMES = ("libgomp", "libiomp", "libomp")


@functools.cache
def _runtime() -> ctypes.CDLL | None:
    """The OpenMP runtime this process has loaded (torch's own copy), or None; looked up once."""
    import torch  # noqa: F401  (loads the runtime, so that the answer kept is never a premature None)

    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split()[-1] for line in maps if any(r in line for r in _RUNTIMES) and "/" in line}
    except OSError:                          # not Linux: nothing to look up
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        if hasattr(lib, "omp_pause_resource_all"):
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            return lib
    return None


def release_idle_threads() -> bool:
    """Free the calling thread's OpenMP team (soft pause). True when a runtime did it."""
    lib = _runtime()
    if lib is None:
        return False
    done = lib.omp_pause_resource_all(1) == 0        # 1 = omp_pause_soft
    if not done:
        log.debug("OpenMP runtime refused to pause its threads")
    return done
