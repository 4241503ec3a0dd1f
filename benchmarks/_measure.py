"""Process memory and scaling exponents for the benchmark scripts."""

from __future__ import annotations

from pathlib import Path


def memory_mb(field: str = "VmHWM", fallback: bool = True) -> float:
    """``VmRSS`` or ``VmHWM`` (the resident high-water mark) of this process, in MB.

    Read from ``/proc/self/status``; where that is missing, the peak falls back to
    ``ru_maxrss`` (never reset, and inherited across ``exec``) when ``fallback``, and
    anything else raises.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    if field != "VmHWM" or not fallback:
        raise RuntimeError(f"{field} is not in /proc/self/status on this machine")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0, ``clear_refs``); whether it worked.

    Where it cannot be reset, later peaks are of the whole process so far: record the result
    so the JSON says which.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def log_slope(xs, ys) -> float:
    """The exponent ``a`` of ``y ~ x^a``: the least-squares slope in log-log."""
    import numpy as np

    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])
