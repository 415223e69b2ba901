"""The CPU kernel pins (iif_d2.utils.machine): what a report says about the kernels its runs
used."""

import json
import os
import subprocess
import sys

import pytest

from iif_d2.utils.machine import KERNEL_PINS, kernel_pin_env, native_capability, resolve_kernel_pin


def _describe(env):
    code = (
        "import json; from iif_d2.utils.machine import cpu_capability, describe_machine; "
        "print(json.dumps([cpu_capability(), describe_machine()]))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in KERNEL_PINS["default"]}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pins_hold_every_library():
    for env in KERNEL_PINS.values():
        assert set(env) == {"ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"}
    assert kernel_pin_env("native") == {}
    with pytest.raises(ValueError, match="unknown CPU kernel pin 'avx3'.*native, avx2, default"):
        kernel_pin_env("avx3")
    # by default the tools hold a CPU to AVX2, the kernels the README's numbers were measured on
    if native_capability() in ("AVX2", "AVX512"):
        assert resolve_kernel_pin() == ("avx2", KERNEL_PINS["avx2"])
    else:
        assert resolve_kernel_pin() == ("native", {})
    assert resolve_kernel_pin("native") == ("native", {})


def test_a_full_pin_is_reported_and_a_partial_one_named():
    cap, machine = _describe(kernel_pin_env("default"))
    assert cap == "DEFAULT"
    if native_capability() not in ("DEFAULT", "unknown"):
        assert f"(DEFAULT kernels) pinned (the CPU has {native_capability()})" in machine
    cap, machine = _describe({"ATEN_CPU_CAPABILITY": "default"})  # oneDNN and MKL left free
    assert cap == "DEFAULT (ONEDNN_MAX_CPU_ISA and MKL_ENABLE_INSTRUCTIONS unset)"
    cap, machine = _describe({})
    assert "pinned" not in machine and cap.upper().startswith(native_capability())


def test_benchmark_refuses_an_unknown_pin():
    out = subprocess.run(
        [sys.executable, "dev/benchmark_synthlt.py", "--kernels", "avx3"],
        capture_output=True, text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )  # fmt: skip
    assert out.returncode == 2 and "invalid choice: 'avx3'" in out.stderr
