"""Process groups for the benchmarks: each contestant runs in a session of its own, its output
read line by line as it comes, and the next starts only once the last one's processes (Ray's
among them) are all gone."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence


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


class Contestant:
    """command started now in a session (so a process group) of its own: the contestant, a local
    Ray it starts and Ray's workers are one group, which end() stops. Its stdout and stderr, as
    text, are read by a thread as they come, so that a full pipe never stalls it and each line's
    arrival is known: every line is kept in lines with its time.time(), and handed to on_line
    with the seconds since the launch. An exception on_line raises ends its calls but not the
    reading (the rest of the output still goes to lines); join() and finish() raise it.

    launched is time.time() just before the process started, exited the time wait() returned
    (the exit, or the timeout): a benchmark's wall time lies between the two."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        on_line: Callable[[float, str], None] | None = None,
    ) -> None:
        self.lines: list[tuple[float, str]] = []  # (time.time() as it arrived, the line with its newline)
        self.exited: float | None = None
        self._on_line = on_line
        self._on_line_error: BaseException | None = None  # what on_line raised, raised by join()
        self.launched = time.time()
        self.proc = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            at = time.time()
            self.lines.append((at, line))
            if self._on_line is not None and self._on_line_error is None:
                try:
                    self._on_line(at - self.launched, line)
                except BaseException as exc:  # the thread would end, the rest of the output unread
                    exc.add_note(f"raised by on_line for the contestant's output line {line!r}")
                    self._on_line_error = exc

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Its exit code once it has exited, or None if it still runs after timeout_s; either way
        the time it returned as exited. Its group is left as it is."""
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        self.exited = time.time()
        return rc

    def join(self, timeout_s: float = 30) -> None:
        """Return once its output is read to the end (no process holds the pipe any more), or
        after timeout_s: lines is then complete. Raises what on_line raised, if it did."""
        self._reader.join(timeout=timeout_s)
        if self._on_line_error is not None:
            raise self._on_line_error

    def end(self) -> None:
        """End its group (end_group: back once none of its processes is left), then read the rest
        of its output. What on_line raised is left to join() and finish(): end() is also a
        caller's cleanup after a failure of its own, which it must not hide."""
        end_group(self.proc)
        self._reader.join(timeout=30)

    def finish(self, timeout_s: float | None = None) -> int | None:
        """wait(timeout_s), then end() the group whatever happened, also when this script is
        stopped: Ray processes on their way out would take CPU from the next contestant. Then
        raises what on_line raised, if it did."""
        try:
            rc = self.wait(timeout_s)
        finally:
            self.end()
        self.join(timeout_s=0)
        return rc
