"""What the generated LVIS-format sets (SynthLT, FashionLT) share: visible masks as polygons, the
categories with LVIS's frequency groups from the training image counts, the atomic json
writing, the cache keyed by the generator's spec (under a file lock), and the registration of
the ``<prefix>_train`` / ``<prefix>_val`` pair with LVIS evaluation."""

import dataclasses
import json
import logging
import os
from typing import Callable, Dict, List, Sequence

import numpy as np

__all__ = [
    "categories",
    "ensure_generated",
    "frequency_group",
    "polygons",
    "register_generated_lvis",
    "write_splits",
]

logger = logging.getLogger(__name__)


def frequency_group(image_count: int) -> str:
    """LVIS's group of a class from its training image count: "r" (1-10), "c" (11-100) or "f"
    (> 100)."""
    return "r" if image_count <= 10 else "c" if image_count <= 100 else "f"


def polygons(mask: np.ndarray) -> List[List[float]]:
    """The outer contours of a boolean mask, as COCO polygons (each with >= 3 points)."""
    import cv2

    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    return [c.flatten().astype(float).tolist() for c in contours if len(c) >= 3]


def categories(names: Sequence[str], train_anns: List[Dict], defs: Sequence[str]) -> List[Dict]:
    """LVIS categories (ids 1..C in ``names`` order) with the fields LVIS evaluation reads:
    frequency group, image and instance counts, all from the training annotations."""
    images = [set() for _ in names]
    instances = [0] * len(names)
    for a in train_anns:
        images[a["category_id"] - 1].add(a["image_id"])
        instances[a["category_id"] - 1] += 1
    cats = []
    for c, name in enumerate(names):
        n = len(images[c])
        cats.append(
            {
                "id": c + 1,
                "name": name,
                "synonyms": [name],
                "def": defs[c],
                "frequency": frequency_group(n),
                "image_count": n,
                "instance_count": instances[c],
            }
        )
    return cats


def write_splits(root: str, splits: Dict[str, Dict], cats: List[Dict], description: str, spec):
    """Write ``<root>/<split>.json`` for each split (train first, val last: val.json marks a
    complete set), each with ``cats`` and an ``info`` holding ``spec``; atomically."""
    for split, data in splits.items():
        data["categories"] = cats
        data["info"] = {"description": f"{description} {split}", "spec": dataclasses.asdict(spec)}
        tmp = os.path.join(root, f"{split}.json.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, os.path.join(root, f"{split}.json"))  # complete files only


def _is_generated(spec, root: str) -> bool:
    try:
        with open(os.path.join(root, "val.json")) as f:  # val.json is written last
            return json.load(f)["info"]["spec"] == dataclasses.asdict(spec)
    except (OSError, ValueError, KeyError):
        return False


def ensure_generated(spec, root: str, write: Callable[[object, str], None], name: str) -> None:
    """Generate a set under ``root`` with ``write(spec, root)`` unless it is there with the same
    spec.

    Safe to call from several processes at once (training ranks): one generates under a file
    lock, the others wait and find it done.
    """
    if _is_generated(spec, root):
        return
    import fcntl

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_generated(spec, root):
            logger.info("Generating %s under %s ...", name, root)
            write(spec, root)


def register_generated_lvis(
    prefix: str, root: str, ensure: Callable[[], None], thing_classes: List[str]
):
    """Register ``<prefix>_train`` and ``<prefix>_val`` (LVIS format, LVIS evaluation) whose
    files ``ensure()`` generates under ``root`` on first use."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    for split in ("train", "val"):
        json_file = os.path.join(root, f"{split}.json")

        def load(json_file=json_file):
            ensure()
            return load_lvis_json(json_file, root + os.sep)

        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            json_file=json_file,
            generated_on_first_use=True,  # no files to check before the run
            image_root=root,
            evaluator_type="lvis",
            thing_classes=list(thing_classes),
        )
