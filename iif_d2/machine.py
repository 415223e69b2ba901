"""One line describing the machine a number was measured on, for the tools' reports.

CPU training repeats bit for bit for the same seed, thread count and *kernels*: torch and oneDNN
pick their kernels by the CPU's instruction set, and another set (AVX2 against AVX-512 or AMX)
rounds differently, so the same seed trains another model there. ``cpu_capability`` names the
set torch dispatches to; every report carries it beside the CPU model.
"""

import os
import platform

__all__ = ["cpu_capability", "cpu_kernels", "cpu_model", "describe_machine"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to ("AVX2", "AVX512", ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_kernels() -> str:
    """The CPU model and torch's kernel set: what must match for a seed's bits to repeat."""
    return f"{cpu_model()} ({cpu_capability()} kernels)"


def describe_machine() -> str:
    """CPU model and torch's kernel set, cores, memory and Python, in one line."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu_kernels()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}"
    )
