#!/usr/bin/env python
"""Time a plain ``torch.save`` of a checkpoint against :class:`iif_d2.engine.checkpoint.IIFCheckpointer`'s
atomic save (temporary file, flush, fsync, rename, directory fsync, then ``last_checkpoint``
the same way), on a state dict of about 90 MB (a Mask R-CNN R-50-FPN's is ~170 MB).

Both write ``{"model": state_dict, "iteration": i}`` into the same directory; runs alternate
(A B A B ...) after one warm-up each, and the medians and their ratio (atomic / plain) are
printed. The plain save does not fsync, so on a disk the ratio mostly measures the flush to
the device; on tmpfs fsync is free. Choose the directory with ``--dir`` (default: a fresh
temporary directory inside the system's temporary directory); its file system is printed.

    python tools/benchmark_checkpoint.py [--size-mb 90] [--repeats 7] [--threads 1] [--dir DIR]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import torch
from torch import nn

from iif_d2.engine.checkpoint import IIFCheckpointer
from iif_d2.utils.machine import describe_machine


def build_model(size_mb: float) -> nn.Module:
    """A module of float32 tensors shaped like a ResNet's convs, ``size_mb`` MB in all."""
    model = nn.Module()
    shapes = [(256, 256, 3, 3), (1024, 256, 1, 1), (256, 1024, 1, 1), (512, 512, 3, 3)]
    remaining, i = int(size_mb * 2**20 / 4), 0
    while remaining > 0:
        shape = shapes[i % len(shapes)]
        numel = min(remaining, shape[0] * shape[1] * shape[2] * shape[3])
        model.register_parameter(f"w{i}", nn.Parameter(torch.randn(numel)))
        remaining -= numel
        i += 1
    return model


def file_system(path: str) -> str:
    """The type of the file system holding ``path`` (from /proc/mounts), or ``"unknown"``."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best = max(
        (m for m in mounts if real.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return f"{best[1]} (mounted at {best[0]})" if best else "unknown"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb", type=float, default=90.0, help="state dict size in MB (default: 90)"
    )
    parser.add_argument(
        "--repeats", type=int, default=7, help="timed runs of each save (default: 7)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads, pinned (default: 1)")
    parser.add_argument(
        "--dir",
        default=None,
        help="a temporary directory is made (and removed) inside this one "
        "(default: the system's temporary directory)",
    )
    args = parser.parse_args()
    if args.repeats < 1 or args.size_mb <= 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1 and --size-mb > 0")
    torch.set_num_threads(args.threads)

    root = tempfile.mkdtemp(prefix="iif_ckpt_bench_", dir=args.dir)
    try:
        model = build_model(args.size_mb)
        checkpointer = IIFCheckpointer(model, root, save_to_disk=True)
        plain_file = os.path.join(root, "plain.pth")

        def plain(i):
            torch.save({"model": model.state_dict(), "iteration": i}, plain_file)

        def atomic(i):
            checkpointer.save("model_final", iteration=i)

        times = {"plain torch.save": [], "atomic save": []}
        fns = dict(zip(times, (plain, atomic)))
        for fn in fns.values():  # warm-up
            fn(-1)
        for i in range(args.repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(i)
                times[name].append(time.perf_counter() - start)

        size = os.path.getsize(os.path.join(root, "model_final.pth")) / 2**20
        print(
            f"{describe_machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch thread(s); file system: {file_system(root)}"
        )
        print(f"checkpoint {size:.1f} MiB, {args.repeats} alternating runs each (medians):")
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name, median in medians.items():
            spread = f"min {min(times[name]):.3f} s, max {max(times[name]):.3f} s"
            print(f"  {name:17s} {median:.3f} s  ({spread})")
        ratio = medians["atomic save"] / medians["plain torch.save"]
        print(f"  ratio atomic / plain: {ratio:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
