"""SynthLT: a synthetic long-tailed instance-segmentation dataset in LVIS v1 format.

Each class is a (colour, shape) pair: 8 colours x 3 shapes, with confusable neighbours (red /
orange, blue / cyan, ...), so classes that share a shape differ only by a colour the model must
learn, under per-instance colour jitter and texture noise. Images hold several instances that
may overlap (masks are the visible parts), over a cluttered background of unannotated
distractors.

Train is long-tailed with LVIS's groups: class c appears in
``n_c = round(max_images * imbalance ** (-c / (C - 1)))`` images (at least 1), so the rare
(1-10 images), common (11-100) and frequent (> 100) groups are all populated. The colour/shape
assignment is a Latin square, so every group mixes all shapes and most colours. Val holds every
class, each in ``val_images_per_class`` images, exhaustively annotated (every absent class is a
negative). Everything is deterministic from the seed.
"""

import dataclasses
import logging
import math
import os
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from iif_d2.data import lvis_json

__all__ = ["SynthSpec", "background", "class_names", "generate_split", "register_synthetic_lvis"]

logger = logging.getLogger(__name__)

SHAPES = ("rectangle", "ellipse", "triangle")
COLOURS = {
    "red": (215, 40, 40),
    "orange": (235, 135, 30),
    "yellow": (225, 210, 45),
    "green": (45, 170, 60),
    "cyan": (40, 195, 205),
    "blue": (45, 75, 215),
    "purple": (135, 55, 200),
    "pink": (230, 110, 180),
}
MAX_CLASSES = len(SHAPES) * len(COLOURS)


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """What to generate; part of the cache key (a changed spec regenerates the data)."""

    num_classes: int = 24
    max_images: int = 300  # train images of the most frequent class
    imbalance: float = 150.0  # max_images / images of the rarest class
    classes_per_image: float = 3.0  # mean number of classes in a train image
    # 64 images per class: 492 val images (of 512 drawn, the empty ones dropped), >= 64
    # instances of every class (rare ones included), so each group's AP rests on hundreds of
    # instances (SynthLT v2; v1 had 8: 64 images)
    val_images_per_class: int = 64
    image_size: int = 128
    distractors: int = 3
    seed: int = 0


def class_names(num_classes: int) -> List[str]:
    """Names of the first ``num_classes`` classes, in contiguous-id order (most frequent first)."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in [1, {MAX_CLASSES}], got {num_classes}.")
    colours = list(COLOURS)
    names = []
    for c in range(num_classes):
        colour = c % len(colours)
        shape = (c // len(colours) + colour) % len(SHAPES)  # Latin square
        names.append(f"{colours[colour]}_{SHAPES[shape]}")
    return names


def train_image_counts(spec: SynthSpec) -> List[int]:
    """Images per class in train: the exponential long-tail profile."""
    C = spec.num_classes
    return [
        max(1, round(spec.max_images * spec.imbalance ** (-c / max(C - 1, 1)))) for c in range(C)
    ]


def _assign(spec: SynthSpec, split: str, rng) -> List[List[int]]:
    """Classes present in each image of the split."""
    C = spec.num_classes
    if split == "train":
        counts = train_image_counts(spec)
        n_images = math.ceil(sum(counts) / spec.classes_per_image)
    else:
        counts = [spec.val_images_per_class] * C
        n_images = math.ceil(C * spec.val_images_per_class / spec.classes_per_image)
    n_images = max(n_images, max(counts))
    present: List[List[int]] = [[] for _ in range(n_images)]
    for c, n in enumerate(counts):
        for i in rng.choice(n_images, size=n, replace=False):
            present[i].append(c)
    return [p for p in present if p]  # no empty images


def _shape_mask(shape: str, box: Tuple[float, float, float, float], size: int, angle: float):
    x0, y0, w, h = box
    cx, cy = x0 + w / 2, y0 + h / 2
    if shape == "ellipse":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([w / 2 * np.cos(t), h / 2 * np.sin(t)], 1)
    elif shape == "rectangle":
        pts = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    else:
        pts = np.array([[0, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    pts = pts @ rot.T + [cx, cy]
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=1)
    return np.asarray(img, dtype=bool)


def background(size: int, n_distractors: int, rng) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(70, 130, size=3)
    grad = rng.uniform(-30, 30, size=(2, 3))
    arr = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    arr = arr + rng.normal(0, 8, size=(size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(n_distractors):  # unannotated clutter: grey blobs and lines
        grey = tuple(int(v) for v in rng.uniform(40, 190) + rng.uniform(-10, 10, size=3))
        x, y = rng.uniform(0, size, size=2)
        r = rng.uniform(3, size / 8)
        if rng.rand() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=grey)
        else:
            x2, y2 = rng.uniform(0, size, size=2)
            draw.line([x, y, x2, y2], fill=grey, width=int(rng.randint(1, 4)))
    return np.asarray(img).astype(np.float32)


_polygons = lvis_json.polygons


def _render(spec: SynthSpec, classes: List[int], names: List[str], rng):
    """One image: returns the uint8 array and its annotations (visible masks)."""
    size = spec.image_size
    arr = background(size, spec.distractors, rng)
    objects = [c for c in classes for _ in range(1 if rng.rand() < 0.7 else 2)]
    rng.shuffle(objects)
    scale = min(1.0, math.sqrt(3.0 / len(objects)))
    owner = np.full((size, size), -1)
    masks = []
    for k, c in enumerate(objects):
        w, h = rng.uniform(0.16, 0.36, size=2) * size * scale + 6
        x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
        shape = names[c].split("_")[1]
        mask = _shape_mask(shape, (x0, y0, w, h), size, rng.uniform(-0.4, 0.4))
        colour = np.array(COLOURS[names[c].split("_")[0]]) + rng.uniform(-18, 18, size=3)
        texture = rng.normal(0, 10, size=(int(mask.sum()), 1))
        arr[mask] = np.clip(colour + texture, 0, 255)
        owner[mask] = k
        masks.append(mask)
    for k, c in enumerate(objects):
        visible = owner == k
        if visible.sum() < 12 or not _polygons(visible):
            # hidden by later objects: move it to the front so every assigned class stays
            arr[masks[k]] = np.clip(np.array(COLOURS[names[c].split("_")[0]]), 0, 255)
            owner[masks[k]] = k
    anns = []  # visible parts, once every object is in its final place
    for k, c in enumerate(objects):
        visible = owner == k
        ys, xs = np.nonzero(visible)
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1)]
        box.append(float(ys.max() - ys.min() + 1))
        polys = _polygons(visible)
        anns.append(
            {"category_id": c + 1, "bbox": box, "area": float(visible.sum()), "segmentation": polys}
        )
    return arr.astype(np.uint8), anns


def _categories(spec: SynthSpec, train_anns: List[Dict]) -> List[Dict]:
    names = class_names(spec.num_classes)
    defs = [f"a {name.replace('_', ' ')}" for name in names]
    return lvis_json.categories(names, train_anns, defs)


def generate_split(spec: SynthSpec, split: str, image_dir: str) -> Dict:
    """Render the images of ``split`` ("train" or "val") into ``image_dir``.

    Returns:
        the LVIS-format dict without ``categories`` (they come from train).
    """
    rng = np.random.RandomState(spec.seed + (0 if split == "train" else 1_000_003))
    names = class_names(spec.num_classes)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i, classes in enumerate(_assign(spec, split, rng)):
        arr, anns = _render(spec, classes, names, rng)
        file_name = f"{i + 1:06d}.png"
        Image.fromarray(arr).save(os.path.join(image_dir, file_name))
        present = {a["category_id"] for a in anns}
        absent = sorted(set(range(1, spec.num_classes + 1)) - present)
        images.append(
            {
                "id": i + 1,
                "width": spec.image_size,
                "height": spec.image_size,
                "coco_url": f"synthlt://{os.path.basename(image_dir)}/{file_name}",
                # exhaustively annotated: every absent class is a verified negative
                "neg_category_ids": absent,
                "not_exhaustive_category_ids": [],
            }
        )
        for a in anns:
            annotations.append(dict(a, id=len(annotations) + 1, image_id=i + 1))
    return {"images": images, "annotations": annotations, "licenses": []}


def _write_dataset(spec: SynthSpec, root: str):
    splits = {s: generate_split(spec, s, os.path.join(root, s)) for s in ("train", "val")}
    categories = _categories(spec, splits["train"]["annotations"])
    lvis_json.write_splits(root, splits, categories, "iif-d2 SynthLT", spec)


def ensure_generated(spec: SynthSpec, root: str) -> None:
    """Generate the dataset under ``root`` unless it is there with the same spec (under a file
    lock: several training ranks may call it at once)."""
    lvis_json.ensure_generated(spec, root, _write_dataset, "SynthLT")


def register_synthetic_lvis(prefix: str, root: str, spec: SynthSpec = SynthSpec()):
    """Register ``<prefix>_train`` and ``<prefix>_val`` (LVIS format, LVIS evaluation),
    generated under ``root`` on first use.
    """
    lvis_json.register_generated_lvis(
        prefix, root, lambda: ensure_generated(spec, root), class_names(spec.num_classes)
    )
