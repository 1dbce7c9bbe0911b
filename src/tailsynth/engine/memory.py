"""Peak resident memory (RSS) of this process while a stage runs, recorded in its manifest (``peak_rss_bytes``).

On Linux the kernel keeps the peak RSS of a process (``VmHWM`` in ``/proc/self/status``); writing ``5`` to
``/proc/self/clear_refs`` resets it to the current RSS, so :class:`PeakRss` resets it when a stage starts and reads
it when the stage ends: the exact peak of that stage (``scope`` "stage"; memory of worker processes the stage
starts is not included). Where that is not possible (another OS, a kernel that refuses the reset) it reports
``resource.getrusage``'s ``ru_maxrss``, the peak since the process started, an upper bound (``scope`` "process").
"""
from __future__ import annotations

import sys
from pathlib import Path

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmHWM, VmRSS) in bytes, None where there is none."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS; True when that worked."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    high, now = _status_bytes("VmHWM"), _status_bytes("VmRSS")
    return high is not None and now is not None and high <= now + (64 << 20)  # VmRSS may have moved since


def _process_peak() -> int:
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes, Linux: kB


class PeakRss:
    """``peak = PeakRss().start()``, then ``peak.read()``: the peak RSS since ``start`` (scope "stage": exact) or since
    the process started (scope "process"); ``with PeakRss() as peak: ...`` leaves it in ``peak.bytes``."""

    def start(self) -> "PeakRss":
        self.scope = "stage" if _reset_peak() else "process"
        self.bytes: int | None = None
        return self

    def __enter__(self) -> "PeakRss":
        return self.start()

    def read(self) -> int:
        """The peak so far (also after the block)."""
        high = _status_bytes("VmHWM") if self.scope == "stage" else None
        return int(high) if high is not None else _process_peak()

    def __exit__(self, *exc) -> None:
        self.bytes = self.read()
