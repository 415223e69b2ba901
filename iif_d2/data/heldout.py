"""FASA's held-out images: which training images are held out, and the loader that feeds them.

* :func:`split_heldout`: a deterministic slice of the annotated training images that never takes
  a class's last training image.
* :func:`save_heldout_ids` / :func:`load_heldout_ids`: the chosen images, by id, in a json file
  written once per run (``OUTPUT_DIR/iif_heldout.json``).
* :class:`HeldoutDatasetMapper` and :func:`build_heldout_loader`: detectron2's test loader over
  the held-out dicts, with a mapper that keeps the annotations (detectron2's ``DatasetMapper``
  drops them when ``is_train=False``, on v0.6 as on main).
"""

import json
import logging
from collections import Counter
from typing import Dict, Hashable, List, NamedTuple, Sequence

import numpy as np
from detectron2.data import DatasetMapper, build_detection_test_loader

from iif_d2.utils.io import write_json_atomic

__all__ = [
    "HeldoutSplit",
    "HeldoutDatasetMapper",
    "build_heldout_loader",
    "image_key",
    "load_heldout_ids",
    "save_heldout_ids",
    "split_heldout",
]

logger = logging.getLogger(__name__)
KEY = "DATASETS.HELDOUT"


class HeldoutSplit(NamedTuple):
    """The result of :func:`split_heldout`."""

    train: List[Dict]
    heldout: List[Dict]
    skipped_images: int  # drawn, but kept in training: each held a class's last training image
    protected_classes: List[int]  # the classes those images protected


def image_key(record: Dict) -> Hashable:
    """A dataset dict's identity: its ``image_id``, else its ``file_name``."""
    return record["image_id"] if "image_id" in record else record["file_name"]


def _classes(record: Dict) -> set:
    return {a["category_id"] for a in record.get("annotations", ()) if not a.get("iscrowd", 0)}


def split_heldout(
    dataset_dicts: Sequence[Dict], fraction: float, max_images: int, seed: int = 0
) -> HeldoutSplit:
    """Hold out a slice of the training images for FASA's per-class loss.

    Among the N images with at least one non-crowd annotation, ``round(fraction * N)`` (half
    up) are wanted, at most ``max_images`` and at least 1 when ``fraction > 0``. They are taken
    along a permutation drawn with its own fixed ``seed`` (not cfg.SEED: a resumed run, and
    every rank, holds out the same images); an image that holds the last remaining training
    image of any class is skipped, so every class keeps at least one training image (fewer
    images are held out only when too few can be taken).

    Args:
        dataset_dicts: detectron2 dataset dicts.
        fraction: HELDOUT.FRACTION, in [0, 1).
        max_images: HELDOUT.MAX_IMAGES, >= 1 when ``fraction > 0``.
        seed: the permutation's seed.

    Returns:
        HeldoutSplit, the dicts in their original order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"{KEY}.FRACTION {fraction!r} must lie in [0, 1).")
    if fraction > 0 and max_images < 1:
        raise ValueError(f"{KEY}.MAX_IMAGES {max_images!r} must be >= 1 when FRACTION > 0.")
    classes = [_classes(d) for d in dataset_dicts]
    candidates = [i for i, c in enumerate(classes) if c]
    wanted = min(int(np.floor(fraction * len(candidates) + 0.5)), max_images)
    if fraction > 0 and candidates:
        wanted = max(wanted, 1)
    remaining = Counter(c for cs in classes for c in cs)
    chosen, skipped, protected = set(), 0, set()
    for j in np.random.RandomState(seed).permutation(len(candidates)):
        if len(chosen) == wanted:
            break
        i = candidates[j]
        last = [c for c in classes[i] if remaining[c] == 1]
        if last:
            skipped += 1
            protected.update(last)
            continue
        remaining.subtract(classes[i])
        chosen.add(i)
    train = [d for i, d in enumerate(dataset_dicts) if i not in chosen]
    heldout = [d for i, d in enumerate(dataset_dicts) if i in chosen]
    return HeldoutSplit(train, heldout, skipped, sorted(protected))


def save_heldout_ids(path: str, split: HeldoutSplit, **settings):
    """Write the held-out image ids (and how they were chosen) to ``path``, atomically."""
    payload = {
        **settings,
        "num_heldout": len(split.heldout),
        "skipped_images": split.skipped_images,
        "protected_classes": split.protected_classes,
        "image_ids": [image_key(d) for d in split.heldout],
    }
    write_json_atomic(path, payload)


def load_heldout_ids(path: str) -> set:
    """The held-out image ids of a file written by :func:`save_heldout_ids`."""
    try:
        with open(path) as f:
            data = json.load(f)
        ids = data["image_ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{KEY}.IMAGE_IDS_FILE {path!r} is not a held-out file written by iif-d2 ({e}). "
            "Leave the key empty: it is resolved before training."
        ) from None
    if not isinstance(ids, list) or not all(isinstance(i, (int, str)) for i in ids):
        raise ValueError(f"{path}: 'image_ids' must be a list of image ids (int or str).")
    return set(ids)


class HeldoutDatasetMapper(DatasetMapper):
    """:class:`DatasetMapper` that keeps the annotations, with the test-time resize, or the
    training augmentations for MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS "authors".

    detectron2's mapper (v0.6 and main alike) pops ``annotations`` when ``is_train=False``.
    This one takes the augmentations of ``DatasetMapper.from_config(cfg, is_train=False)``
    (``is_train=True`` with "authors": random resize among INPUT.MIN_SIZE_TRAIN, flip, crop
    if INPUT.CROP.ENABLED, as the authors' held-out pass, which uses their training pipeline)
    and maps like a training mapper, so each image gets ``instances`` with ``gt_boxes`` and
    ``gt_classes`` (crowd boxes dropped; masks and keypoints not loaded).
    """

    @classmethod
    def from_config(cls, cfg):
        authors = cfg.MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS == "authors"
        ret = DatasetMapper.from_config(cfg, is_train=authors)
        # is_train=True keeps the annotations; the augmentations are those chosen above
        ret.update(is_train=True, use_instance_mask=False, use_keypoint=False)
        ret["recompute_boxes"] = False  # boxes from the (cropped) annotations: no masks here
        return ret


def build_heldout_loader(cfg, heldout_dicts: Sequence[Dict]):
    """detectron2's test loader over the held-out dicts (batch 1; its inference sampler gives
    each rank a share), with :class:`HeldoutDatasetMapper` and DATALOADER.NUM_WORKERS."""
    return build_detection_test_loader(
        dataset=list(heldout_dicts),
        mapper=HeldoutDatasetMapper(cfg),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )
