"""One line describing the machine a number was measured on, for the tools' reports."""

import os
import platform

__all__ = ["describe_machine"]


def describe_machine() -> str:
    """CPU model, cores, memory and Python, in one line (standard library only)."""
    model = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [x.split(":", 1)[1].strip() for x in f if x.startswith("model name")]
        model = names[0] if names else model
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"
