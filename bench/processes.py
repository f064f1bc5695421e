"""Process groups for the benchmarks: each contestant runs in a session of its own, and the
next starts only once the last one's processes (Ray's among them) are all gone."""

from __future__ import annotations

import os
import signal
import subprocess


def end_group(proc: subprocess.Popen, timeout_s: float = 60) -> None:
    """SIGKILL the process group proc leads; return when none of its processes is left."""
    import psutil

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == proc.pid:
                members.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    psutil.wait_procs(members, timeout=timeout_s)
