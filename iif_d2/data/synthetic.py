"""A small synthetic, long-tailed instance-segmentation dataset in LVIS v1 format.

Images hold coloured shapes (rectangles, ellipses, triangles) on a noisy background; a class
is a (shape, colour) pair, so classes sharing a shape differ only by colour. Class frequencies
follow an exponential profile with the requested imbalance factor. Deterministic from a seed.
"""

import json
import math
import os
from typing import Dict, List

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["make_synthetic_lvis", "register_synthetic_lvis", "synthetic_class_names"]

SHAPES = ("rectangle", "ellipse", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 200, 210),
    "orange": (240, 140, 30),
    "white": (240, 240, 240),
}


def synthetic_class_names(num_classes: int) -> List[str]:
    combos = [f"{c}_{s}" for c in COLOURS for s in SHAPES]
    if not 1 <= num_classes <= len(combos):
        raise ValueError(f"num_classes must lie in [1, {len(combos)}], got {num_classes}.")
    return combos[:num_classes]


def _polygon(shape: str, x0: float, y0: float, w: float, h: float) -> List[float]:
    if shape == "rectangle":
        pts = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    elif shape == "triangle":
        pts = [(x0 + w / 2, y0), (x0 + w, y0 + h), (x0, y0 + h)]
    else:
        cx, cy = x0 + w / 2, y0 + h / 2
        pts = [
            (cx + w / 2 * math.cos(t), cy + h / 2 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 16, endpoint=False)
        ]
    return [float(v) for p in pts for v in p]


def make_synthetic_lvis(
    json_file: str,
    image_dir: str,
    *,
    num_images: int = 32,
    num_classes: int = 8,
    imbalance: float = 10.0,
    instances_per_image: int = 3,
    image_size: int = 96,
    seed: int = 0,
    split: str = "train",
) -> Dict:
    """Write ``num_images`` PNG images to ``image_dir`` and their LVIS v1 json to ``json_file``.

    Class c is drawn with probability proportional to ``imbalance ** (-c / (C - 1))``.

    Returns:
        the json dict (categories carry ``image_count``, ``instance_count``, ``frequency``).
    """
    rng = np.random.RandomState(seed)
    names = synthetic_class_names(num_classes)
    prior = imbalance ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    prior /= prior.sum()
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        arr = rng.randint(60, 110, size=(image_size, image_size, 3)).astype(np.uint8)
        img = Image.fromarray(arr)
        draw = ImageDraw.Draw(img)
        present = set()
        for _ in range(rng.randint(1, instances_per_image + 1)):
            c = int(rng.choice(num_classes, p=prior))
            w, h = rng.uniform(0.2, 0.5, size=2) * image_size
            x0, y0 = rng.uniform(0, image_size - w), rng.uniform(0, image_size - h)
            poly = _polygon(SHAPES[c % len(SHAPES)], x0, y0, w, h)
            draw.polygon(poly, fill=COLOURS[names[c].split("_")[0]])
            xs, ys = poly[0::2], poly[1::2]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": c + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "segmentation": [poly],
                }
            )
            present.add(c + 1)
        file_name = f"{i + 1:06d}.png"
        img.save(os.path.join(image_dir, file_name))
        images.append(
            {
                "id": i + 1,
                "width": image_size,
                "height": image_size,
                "coco_url": f"synthetic://{os.path.basename(image_dir)}/{file_name}",
                "neg_category_ids": sorted(set(range(1, num_classes + 1)) - present)[:2],
                "not_exhaustive_category_ids": [],
            }
        )
    categories = []
    for c, name in enumerate(names):
        anns = [a for a in annotations if a["category_id"] == c + 1]
        n_img = len({a["image_id"] for a in anns})
        freq = "r" if n_img <= 10 else "c" if n_img <= 100 else "f"
        categories.append(
            {
                "id": c + 1,
                "name": name,
                "synonyms": [name],
                "frequency": freq,
                "image_count": n_img,
                "instance_count": len(anns),
            }
        )
    data = {
        "info": {"description": f"iif-d2 synthetic long-tailed set ({split}), seed {seed}"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "licenses": [],
    }
    with open(json_file, "w") as f:
        json.dump(data, f)
    return data


def register_synthetic_lvis(name: str, root: str, *, split: str = "train", **kwargs):
    """Register ``name`` as an LVIS-format dataset generated under ``root`` on first use.

    Args:
        name: dataset name for DATASETS.TRAIN / TEST.
        root: folder for ``<split>.json`` and ``<split>/`` images.
        split, kwargs: passed to :func:`make_synthetic_lvis`.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    json_file = os.path.join(root, f"{split}.json")
    image_dir = os.path.join(root, split)

    def load():
        if not os.path.exists(json_file):
            os.makedirs(root, exist_ok=True)
            make_synthetic_lvis(json_file, image_dir, split=split, **kwargs)
        return load_lvis_json(json_file, root + os.sep)

    num_classes = kwargs.get("num_classes", 8)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        json_file=json_file,
        image_root=root,
        evaluator_type="lvis",
        thing_classes=synthetic_class_names(num_classes),
    )
