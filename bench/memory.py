"""Resident memory of this process, read from /proc (Linux).

``getrusage().ru_maxrss`` is not used: Linux carries it across fork and exec, so a child started by
a benchmark driver that had grown large reports the driver's peak, and a driver that ran one
benchmark reports that one's peak in the next. ``VmHWM`` belongs to the current address space and
:func:`reset_peak` starts it again from the current RSS.
"""

from __future__ import annotations


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    """The high-water RSS since the process started or since the last :func:`reset_peak`."""
    return _status_kb("VmHWM") / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak RSS to the current RSS (Documentation/filesystems/proc.rst)
