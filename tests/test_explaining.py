"""How an Explainer replica gives way to predictions, without Ray: its explain settings
(niceness, threads within what num_cpus reserves) and what its constructor does to its own
process (every thread niced, the thread pools capped), in a child process, since a nice value
cannot be lowered back. The served side, /invocations' latency while /explain is flooded, is
test_serve.py's test_invocations_keep_answering_while_explain_is_over_its_budget."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from raymaas.serving.specs import ExplainSpec


def test_the_explainer_yields_by_default():
    spec = ExplainSpec()
    assert spec.niceness == 19 and spec.torch_threads == 1 == spec.reserved_threads


@pytest.mark.parametrize("niceness", [-1, 20])
def test_niceness_is_a_nice_value_a_process_may_take(niceness):
    with pytest.raises(ValidationError, match="niceness"):
        ExplainSpec(niceness=niceness)


def test_threads_stay_within_the_reserved_cpus():
    with pytest.raises(ValidationError, match=r"explain.torch_threads 2 .* explain.num_cpus 0.25 allows 1"):
        ExplainSpec(torch_threads=2)
    assert ExplainSpec(num_cpus=2.5, torch_threads=2).reserved_threads == 2
    assert ExplainSpec(num_cpus=0, niceness=0).reserved_threads == 1  # as Ray sets OMP_NUM_THREADS


def test_every_thread_of_the_process_is_niced_and_its_pools_capped():
    """Linux keeps a nice value per thread: a thread started before (as a replica's event loop
    is) is niced too, one started after inherits it, and torch and OpenBLAS compute on 1 thread."""
    script = textwrap.dedent(
        """
        import os, threading
        import numpy as np  # OpenBLAS's pool starts with the import, before the constructor
        from threadpoolctl import threadpool_info
        from raymaas.serving.explaining import limit_threads, lower_priority

        def nice(tid):
            return os.getpriority(os.PRIO_PROCESS, tid)

        stop = threading.Event()
        earlier = threading.Thread(target=stop.wait)
        earlier.start()
        base = nice(0)
        niceness = min(19, base + 7)  # whatever nice value the test itself runs at
        assert lower_priority(niceness) >= (2 if niceness > base else 0)  # main, earlier (and OpenBLAS's)
        assert {nice(int(tid)) for tid in os.listdir("/proc/self/task")} == {niceness}
        assert lower_priority(base) == 0  # never raised back
        limit_threads(1)
        import torch

        seen = {}

        def later():
            torch.ones(200, 200) @ torch.ones(200, 200)
            seen.update(nice=nice(threading.get_native_id()), torch=torch.get_num_threads())

        thread = threading.Thread(target=later)
        thread.start()
        thread.join()
        stop.set()
        assert seen == {"nice": niceness, "torch": 1}, seen
        assert {pool["num_threads"] for pool in threadpool_info()} == {1}, threadpool_info()
        assert os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "1"
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
