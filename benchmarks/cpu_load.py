"""Outside CPU load during a benchmark: what other programs used of the machine's cores, from /proc/stat.

On the suite's 2-core machines a timing is only meaningful when a core per benchmark thread stayed free, so the
benchmarks report, for each timed span, ``(machine busy seconds - our own CPU seconds) / wall seconds``.
"""

from __future__ import annotations

import os
import resource


def machine_busy_seconds() -> float:
    """Busy (incl. steal) CPU seconds of the whole machine so far, from /proc/stat (0 where unavailable)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime
