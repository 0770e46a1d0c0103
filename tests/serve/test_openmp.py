"""A thread done with torch hands its OpenMP team back (hkllm/serve/openmp.py): the engine's
worker otherwise shares the CPUs with an idle team, and libgomp, managing more threads than CPUs,
makes every parallel region of the worker's sleep and wake."""

import os
import threading

import pytest
import torch

from hkllm.serve.openmp import release_idle_threads


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_a_threads_openmp_team_is_released():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def parallel_work():
            a = torch.randn(1000, 1000)
            a @ a                                  # a product this size runs as a parallel region

        outcome = {}

        def in_a_thread():                       # a fresh thread: its own team, nobody else's
            start = threads_now()
            parallel_work()
            outcome["with team"] = threads_now() - start
            outcome["released"] = release_idle_threads()
            outcome["after"] = threads_now() - start
            parallel_work()                       # a new team where it is needed again: still works
            release_idle_threads()

        t = threading.Thread(target=in_a_thread)
        t.start()
        t.join()
    finally:
        torch.set_num_threads(before)
    if not outcome["released"]:
        pytest.skip("this torch's OpenMP runtime has no omp_pause_resource_all")
    assert outcome["with team"] >= 1, outcome     # 2 threads: one OpenMP thread joined this one
    assert outcome["after"] == 0, outcome
