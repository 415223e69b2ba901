#!/usr/bin/env python
"""Generate (or find cached) the LVIS-shaped dataset and check its class counts.

Prints the generation time, the disk use, and whether each class's image and instance counts,
computed from the written train json, equal LVIS v1 train's (``iif_d2/data/lvis_v1_train.csv``;
for a reduced spec, its scaled targets), with the first mismatch if not. Exit status 0: OK,
1: a count differs, 2: bad arguments or a generation error.

    python dev/generate_lvis_shaped.py [--mini] [--root DIR] [--seed N]
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from iif_d2.data.lvis_shaped import (
    LVIS_SHAPED,
    LVIS_SHAPED_MINI,
    class_targets,
    dataset_dir,
    generate_lvis_shaped,
    lvis_classes,
)


def disk_use(folder):
    """(files, apparent bytes, allocated bytes) under ``folder``."""
    files = size = blocks = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            st = os.stat(os.path.join(parent, name))
            files, size, blocks = files + 1, size + st.st_size, blocks + st.st_blocks * 512
    return files, size, blocks


def counts_from_json(path, num_classes):
    """Per-class (image counts, instance counts), number of images, images without annotations."""
    with open(path) as f:
        data = json.load(f)
    ann = np.array([(a["image_id"], a["category_id"]) for a in data["annotations"]], np.int64)
    instances = np.bincount(ann[:, 1] - 1, minlength=num_classes)
    pairs = np.unique(ann[:, 0] * (num_classes + 1) + ann[:, 1])
    images = np.bincount(pairs % (num_classes + 1) - 1, minlength=num_classes)
    empty = len({i["id"] for i in data["images"]} - set(ann[:, 0].tolist()))
    return images, instances, len(data["images"]), empty


def check(folder, spec):
    """Lines describing the comparison; the first is "OK" or starts with "MISMATCH"."""
    names, csv_images, csv_instances, csv_num_images = lvis_classes()
    if spec.train_images == csv_num_images:
        want_images, want_instances, against = csv_images, csv_instances, "lvis_v1_train.csv"
    else:
        (want_images, want_instances), against = class_targets(spec, "train"), "scaled targets"
    images, instances, num_images, empty = counts_from_json(
        os.path.join(folder, "train.json"), len(names)
    )
    for c, name in enumerate(names):
        if (images[c], instances[c]) != (want_images[c], want_instances[c]):
            return [
                f"MISMATCH vs {against}: class {c + 1} ({name}) has {images[c]} images / "
                f"{instances[c]} instances, expected {want_images[c]} / {want_instances[c]}"
            ]
    if num_images != spec.train_images or empty:
        return [f"MISMATCH: {num_images} train images ({empty} without annotations)"]
    singles = int((images == 1).sum())
    return [
        f"OK: {len(names)} classes' image and instance counts equal {against}",
        f"train: {num_images} images, {instances.sum()} instances, {singles} one-image classes",
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Default root: $DETECTRON2_DATASETS/lvis_shaped (DETECTRON2_DATASETS "
        "defaults to ./datasets).",
    )
    parser.add_argument(
        "--mini", action="store_true", help="the reduced set (2000 train / 200 val images)"
    )
    parser.add_argument("--root", help="parent folder of the generated datasets")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    spec = LVIS_SHAPED_MINI if args.mini else LVIS_SHAPED
    spec = dataclasses.replace(spec, seed=args.seed)
    root = args.root or os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "lvis_shaped")
    cached = os.path.isfile(os.path.join(dataset_dir(root, spec), "spec.json"))
    try:
        start = time.perf_counter()
        folder = generate_lvis_shaped(root, spec)
        seconds = time.perf_counter() - start
        lines = check(folder, spec)
    except (OSError, ValueError) as e:
        print(f"generate_lvis_shaped: error: {e}", file=sys.stderr)
        return 2
    files, size, blocks = disk_use(folder)
    print(f"dataset: {folder}")
    print(f"generation: {'cached' if cached else f'{seconds:.1f} s'}")
    print(f"disk use: {files} files, {size / 2**20:.1f} MiB ({blocks / 2**20:.1f} MiB allocated)")
    print("\n".join(lines))
    return 0 if lines[0].startswith("OK") else 1


if __name__ == "__main__":
    sys.exit(main())
