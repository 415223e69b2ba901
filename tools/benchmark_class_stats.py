#!/usr/bin/env python
"""Time the class statistics on an LVIS v1-sized dataset, on one core.

Builds detectron2-style dataset dicts with LVIS v1 train's shape (100,170 images, 1,270,141
annotations, 1,203 classes, per-class instance counts from the shipped counts file), pins the
process to one core, and times ``count_dataset_dicts`` (best of 3). Target: under 5 s.

    python tools/benchmark_class_stats.py
"""

import argparse
import os
import platform
import time

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

import numpy as np

from iif_d2.data.class_stats import count_dataset_dicts, load_counts_file


def lvis_sized_dicts(seed=0):
    stats = load_counts_file("iif_d2://lvis_v1_train.csv")
    rng = np.random.default_rng(seed)
    cats = np.repeat(np.arange(stats.num_classes), stats.instance_counts)
    rng.shuffle(cats)
    images = np.sort(rng.integers(0, stats.num_images, size=len(cats)))
    bounds = np.searchsorted(images, np.arange(stats.num_images + 1))
    return [
        {"annotations": [{"category_id": int(c), "bbox": [0, 0, 1, 1]} for c in cats[a:b]]}
        for a, b in zip(bounds[:-1], bounds[1:])
    ], stats.num_classes


def main():
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    dicts, num_classes = lvis_sized_dicts()
    n_ann = sum(len(d["annotations"]) for d in dicts)
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        stats = count_dataset_dicts(dicts, num_classes)
        best = min(best, time.perf_counter() - t)
    print(
        f"{platform.machine()} {platform.processor() or ''}, 1 core: {len(dicts):,} images, "
        f"{n_ann:,} annotations, {num_classes} classes counted in {best:.2f} s (target < 5 s)"
    )
    assert sum(stats.instance_counts) == n_ann


if __name__ == "__main__":
    main()
