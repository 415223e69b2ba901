"""One line describing the machine a number was measured on, for the tools' reports.

CPU training repeats bit for bit for the same seed, thread count and *kernels*: torch and oneDNN
pick their kernels by the CPU's instruction set, and another set (AVX2 against AVX-512 or AMX)
rounds differently, so the same seed trains another model there. ``cpu_capability`` names the
set torch dispatches to; every report carries it beside the CPU model.

``KERNEL_PINS`` holds torch (ATen), oneDNN and MKL to one instruction set through their
environment variables, which each library reads when it first dispatches: set them before the
process starts (``dev/benchmark_synthlt.py`` and ``tools/demo.py`` do it for their runs,
by default to AVX2: ``resolve_kernel_pin``). A CPU with
more (AVX-512, AMX) then runs the kernels of a machine that has only that set, so a seed trained
there repeats here bit for bit.
"""

import os
import platform

__all__ = [
    "KERNEL_PINS",
    "cpu_capability",
    "cpu_kernels",
    "cpu_model",
    "describe_machine",
    "kernel_pin_env",
    "native_capability",
    "resolve_kernel_pin",
]

# name -> the environment that holds ATen, oneDNN and MKL to that instruction set
KERNEL_PINS = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    },
    "default": {  # torch's portable kernels
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
    },
}
# the /proc/cpuinfo flag each pin needs
_PIN_NEEDS = {"avx2": "avx2", "default": "sse4_2"}


def _cpuinfo(field: str):
    """The first ``field`` line's value in ``/proc/cpuinfo``; None where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> set:
    return set((_cpuinfo("flags") or "").split())


def native_capability() -> str:
    """The widest kernel set torch would pick on this CPU unpinned, from its flags, in torch's
    names (an AMX CPU runs torch's AVX512 kernels)."""
    flags = _cpu_flags()
    if "avx512f" in flags:
        return "AVX512"
    if "avx2" in flags:
        return "AVX2"
    return "DEFAULT" if flags else "unknown"


def kernel_pin_env(name: str) -> dict:
    """The environment of pin ``name`` ("native": none), checked against this CPU.

    Raises:
        ValueError: an unknown pin, or one this CPU cannot run.
    """
    if name == "native":
        return {}
    if name not in KERNEL_PINS:
        raise ValueError(
            f"unknown CPU kernel pin {name!r}; use one of native, {', '.join(KERNEL_PINS)}"
        )
    flags = _cpu_flags()
    if flags and _PIN_NEEDS[name] not in flags:
        raise ValueError(
            f"this CPU ({cpu_model()}) has no {_PIN_NEEDS[name]}: it cannot run the {name} "
            "kernels; use --kernels native (its runs then repeat only on CPUs like this one)"
        )
    return dict(KERNEL_PINS[name])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows elsewhere."""
    return _cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to ("AVX2", "AVX512", ...).

    Where ``ATEN_CPU_CAPABILITY`` holds torch below the CPU's set but oneDNN or MKL are left
    free, the answer says so: such a run repeats only on CPUs like this one.
    """
    import torch

    cap = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY"):
        free = [k for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS") if k not in os.environ]
        if free:
            cap += f" ({' and '.join(free)} unset)"
    return cap


def cpu_kernels() -> str:
    """The CPU model and torch's kernel set: what must match for a seed's bits to repeat."""
    return f"{cpu_model()} ({cpu_capability()} kernels)"


def _pin_note() -> str:
    native, cap = native_capability(), cpu_capability()
    if os.environ.get("ATEN_CPU_CAPABILITY") and not cap.upper().startswith(native):
        return f" pinned (the CPU has {native})"
    return ""


def describe_machine() -> str:
    """CPU model and torch's kernel set, cores, memory and Python, in one line."""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu_kernels()}{_pin_note()}, {os.cpu_count()} cores, {mem:.0f} GiB, "
        f"Python {platform.python_version()}"
    )


def resolve_kernel_pin(name=None):
    """(pin, its environment) for ``name``; None: the AVX2 pin where this CPU can run it (the
    README's CPU numbers were measured on AVX2 kernels), else native.

    Raises:
        ValueError: ``name`` is unknown or this CPU cannot run it.
    """
    if name is None:
        try:
            return "avx2", kernel_pin_env("avx2")
        except ValueError:
            return "native", {}
    return name, kernel_pin_env(name)
