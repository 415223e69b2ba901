"""FashionLT: a long-tailed instance-segmentation set in LVIS v1 format whose objects are real
photos, the garments of Fashion-MNIST (28x28 grey product photos, 10 classes).

Each image is a canvas (128 px, SynthLT's size) over a smooth-noise background (three octaves of
coloured value noise: never uniform), holding several garments, each one Fashion-MNIST item
upscaled to 24-72 px (a random aspect jitter, mirrored half the time), tinted by a random
colour that says nothing of its class, and possibly overlapping earlier ones (its mask is its
visible part). A garment's mask is its own silhouette: the item's pixels above a threshold,
with its inner holes closed (a sandal's straps enclose one mask) and specks dropped; the
garment's pixels inside it are painted, so the photo's own grey levels (folds, prints, laces)
are what the model sees.

Train draws its items from Fashion-MNIST train, val from Fashion-MNIST test: no photo is in
both. Train is long-tailed with LVIS's groups (image counts: rare 1-10, common 11-100, frequent
> 100): the class of rank r (0 = the most frequent) appears in
``n_r = round(max_images * imbalance ** (-r / 9))`` images: 300, 180, 108 (frequent), 65, 39,
23, 14 (common), 8, 5, 3 (rare). The ranks put garments that look alike in different groups:
shirt (rare) against T-shirt/top (frequent) and pullover (common), coat (rare) against pullover;
ankle boot (rare) against sneaker (frequent) and sandal (common). Val holds every class, each in
``val_images_per_class`` images (every class >= 64 instances), exhaustively annotated (every
absent class is a negative). Everything is deterministic from the seed.

The Fashion-MNIST files are found as :mod:`iif_d2.classification.fashion_mnist` finds them
(``$DETECTRON2_DATASETS/fashion_mnist``, or Debian's ``dataset-fashion-mnist``).
"""

import dataclasses
import math
import os
from typing import Dict, List

import numpy as np
from PIL import Image

from iif_d2.data import lvis_json

__all__ = [
    "FashionLTSpec",
    "class_names",
    "ensure_generated",
    "generate_split",
    "load_items",
    "register_fashion_lt",
    "train_image_counts",
]

# Fashion-MNIST labels in frequency rank order (most frequent first): look-alikes split
# across the groups (see the module docstring)
RANKED_LABELS = (0, 7, 1, 2, 8, 5, 3, 4, 9, 6)
# Fashion-MNIST's class names by label (iif_d2.classification.fashion_mnist.CLASSES, which
# imports torch: the names are repeated here so that registering the set stays light)
LABEL_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")  # fmt: skip
NUM_CLASSES = len(RANKED_LABELS)
THRESHOLD = 24  # item pixel value (0-255) above which a pixel is the garment's


@dataclasses.dataclass(frozen=True)
class FashionLTSpec:
    """What to generate; part of the cache key (a changed spec regenerates the data)."""

    max_images: int = 300  # train images of the most frequent class
    imbalance: float = 100.0  # max_images / images of the rarest class
    classes_per_image: float = 1.5  # mean classes per image drawn: 437 train images (977
    # garments) once the empty draws are dropped
    val_images_per_class: int = 64  # 352 val images, 846 garments, >= 80 of every class
    image_size: int = 128
    min_item: int = 24  # garment size range (px) before crowding shrinks it
    max_item: int = 72
    seed: int = 0


def class_names() -> List[str]:
    """The class names in contiguous-id order (most frequent first)."""
    return [LABEL_NAMES[label] for label in RANKED_LABELS]


def train_image_counts(spec: FashionLTSpec) -> List[int]:
    """Images per class in train, in contiguous-id order: the exponential long-tail profile."""
    C = NUM_CLASSES
    return [max(1, round(spec.max_images * spec.imbalance ** (-r / (C - 1)))) for r in range(C)]


def load_items(split: str) -> Dict[str, np.ndarray]:
    """The Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) of ``split`` ("train": its
    train file, "val": its test file).

    Raises:
        FileNotFoundError: one line naming the Debian package and where else the files go.
    """
    from iif_d2.classification.fashion_mnist import (
        DEBIAN_PACKAGE,
        FashionMNISTNotFound,
        find_fashion_mnist,
        read_idx,
    )

    root = os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "fashion_mnist")
    try:
        files = find_fashion_mnist(root)
    except FashionMNISTNotFound:
        raise FashionMNISTNotFound(
            f"FashionLT needs the Fashion-MNIST IDX files: `sudo apt-get install "
            f"{DEBIAN_PACKAGE}` (Debian/Ubuntu), or put the four *-idx*-ubyte[.gz] files in "
            f"{os.path.abspath(root)} (that is, $DETECTRON2_DATASETS/fashion_mnist)."
        ) from None
    stem = "train" if split == "train" else "test"
    return {
        "images": read_idx(files[f"{stem}_images"]),
        "labels": read_idx(files[f"{stem}_labels"]),
    }


def background(size: int, rng) -> np.ndarray:
    """Smooth coloured value noise: three octaves (4, 8 and 16 cells across) over a random base
    colour, plus a fine grain. float32 (size, size, 3)."""
    arr = rng.uniform(45, 135, size=3) + rng.normal(0, 5, size=(size, size, 3))
    for cells, amp in ((4, 40.0), (8, 22.0), (16, 12.0)):
        grid = rng.uniform(-1, 1, size=(cells + 1, cells + 1, 3)).astype(np.float32)
        for ch in range(3):
            layer = Image.fromarray(grid[..., ch], mode="F").resize((size, size), Image.BICUBIC)
            arr[..., ch] += amp * np.asarray(layer)
    return np.clip(arr, 0, 255).astype(np.float32)


def _silhouette(item: np.ndarray) -> np.ndarray:
    """The garment's mask of an upscaled item: pixels above the threshold, inner holes closed,
    specks (components under a tenth of the largest) dropped."""
    import cv2
    from scipy.ndimage import binary_fill_holes

    mask = binary_fill_holes(item > THRESHOLD)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.nonzero(areas >= areas.max() / 10)[0]
    return np.isin(labels, keep)


def _assign(spec: FashionLTSpec, split: str, rng) -> List[List[int]]:
    """Classes (contiguous ids from 0) present in each image of the split."""
    C = NUM_CLASSES
    counts = train_image_counts(spec) if split == "train" else [spec.val_images_per_class] * C
    n_images = max(math.ceil(sum(counts) / spec.classes_per_image), max(counts))
    present: List[List[int]] = [[] for _ in range(n_images)]
    for c, n in enumerate(counts):
        for i in rng.choice(n_images, size=n, replace=False):
            present[i].append(c)
    return [p for p in present if p]


class _ItemDraw:
    """Draws Fashion-MNIST items of a class without replacement (each photo used once)."""

    def __init__(self, labels: np.ndarray, rng):
        self.order = [rng.permutation(np.nonzero(labels == label)[0]) for label in RANKED_LABELS]
        self.next = [0] * NUM_CLASSES

    def __call__(self, c: int) -> int:
        if self.next[c] >= len(self.order[c]):
            raise ValueError(f"FashionLT: class {class_names()[c]} ran out of Fashion-MNIST items")
        self.next[c] += 1
        return int(self.order[c][self.next[c] - 1])


def _place(item, mask, size, rng, owner, tries=20):
    """Top-left corner for a (h, w) garment: the first of ``tries`` random positions that hides
    at most 40 % of any garment already there, else the one hiding the least."""
    h, w = mask.shape
    best, best_hidden = None, math.inf
    for _ in range(tries):
        y, x = int(rng.randint(0, size - h + 1)), int(rng.randint(0, size - w + 1))
        under = owner[y : y + h, x : x + w][mask]
        hidden = 0.0
        for k in np.unique(under[under >= 0]):
            hidden = max(hidden, (under == k).sum() / (owner == k).sum())
        if hidden <= 0.4:
            return y, x
        if hidden < best_hidden:
            best, best_hidden = (y, x), hidden
    return best


def _render(spec: FashionLTSpec, classes: List[int], items: Dict, draw: _ItemDraw, rng):
    """One image: returns the uint8 array and its annotations (visible masks)."""
    size = spec.image_size
    arr = background(size, rng)
    objects = [c for c in classes for _ in range(1 if rng.rand() < 0.7 else 2)]
    rng.shuffle(objects)
    crowd = min(1.0, math.sqrt(3.0 / len(objects)))
    owner = np.full((size, size), -1)
    placed = []  # (y, x, garment mask, painted pixels)
    for k, c in enumerate(objects):
        photo = items["images"][draw(c)]
        side = math.exp(rng.uniform(math.log(spec.min_item), math.log(spec.max_item))) * crowd
        aspect = rng.uniform(0.85, 1.15)
        w = int(np.clip(round(side * aspect), 16, size))
        h = int(np.clip(round(side / aspect), 16, size))
        img = Image.fromarray(photo).resize((w, h), Image.BILINEAR)
        item = np.asarray(img, dtype=np.float32)
        if rng.rand() < 0.5:
            item = item[:, ::-1]
        mask = _silhouette(item)
        tint = rng.uniform(0.55, 1.0, size=3)  # any colour, whatever the class
        pixels = tint * (40.0 + 215.0 * item[..., None] / 255.0)
        y, x = _place(item, mask, size, rng, owner)
        arr[y : y + h, x : x + w][mask] = pixels[mask]
        owner[y : y + h, x : x + w][mask] = k
        placed.append((y, x, mask, pixels))
    for k, (y, x, mask, pixels) in enumerate(placed):
        visible = owner == k
        if visible.sum() < 12 or not lvis_json.polygons(visible):
            # hidden by later garments: bring it to the front so every assigned class stays
            h, w = mask.shape
            arr[y : y + h, x : x + w][mask] = pixels[mask]
            owner[y : y + h, x : x + w][mask] = k
    anns = []
    for k, c in enumerate(objects):
        visible = owner == k
        ys, xs = np.nonzero(visible)
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1)]
        box.append(float(ys.max() - ys.min() + 1))
        anns.append(
            {
                "category_id": c + 1,
                "bbox": box,
                "area": float(visible.sum()),
                "segmentation": lvis_json.polygons(visible),
            }
        )
    return np.clip(arr, 0, 255).astype(np.uint8), anns


def generate_split(spec: FashionLTSpec, split: str, image_dir: str, items=None) -> Dict:
    """Render the images of ``split`` ("train" or "val") into ``image_dir``.

    Args:
        items: :func:`load_items` of the split (read from the files if None).

    Returns:
        the LVIS-format dict without ``categories`` (they come from train).
    """
    items = items if items is not None else load_items(split)
    rng = np.random.RandomState(spec.seed + (0 if split == "train" else 1_000_003))
    draw = _ItemDraw(items["labels"], rng)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i, classes in enumerate(_assign(spec, split, rng)):
        arr, anns = _render(spec, classes, items, draw, rng)
        file_name = f"{i + 1:06d}.png"
        Image.fromarray(arr).save(os.path.join(image_dir, file_name))
        present = {a["category_id"] for a in anns}
        images.append(
            {
                "id": i + 1,
                "width": spec.image_size,
                "height": spec.image_size,
                "coco_url": f"fashionlt://{os.path.basename(image_dir)}/{file_name}",
                # exhaustively annotated: every absent class is a verified negative
                "neg_category_ids": sorted(set(range(1, NUM_CLASSES + 1)) - present),
                "not_exhaustive_category_ids": [],
            }
        )
        for a in anns:
            annotations.append(dict(a, id=len(annotations) + 1, image_id=i + 1))
    return {"images": images, "annotations": annotations, "licenses": []}


def _write_dataset(spec: FashionLTSpec, root: str):
    splits = {s: generate_split(spec, s, os.path.join(root, s)) for s in ("train", "val")}
    names = class_names()
    defs = [f"a photo of a {n.lower()} (Fashion-MNIST)" for n in names]
    cats = lvis_json.categories(names, splits["train"]["annotations"], defs)
    lvis_json.write_splits(root, splits, cats, "iif-d2 FashionLT", spec)


def ensure_generated(spec: FashionLTSpec, root: str) -> None:
    """Generate the set under ``root`` unless it is there with the same spec (under a file
    lock: several training ranks may call it at once)."""
    lvis_json.ensure_generated(spec, root, _write_dataset, "FashionLT")


def register_fashion_lt(prefix: str, root: str, spec: FashionLTSpec = FashionLTSpec()):
    """Register ``<prefix>_train`` and ``<prefix>_val`` (LVIS format, LVIS evaluation),
    generated under ``root`` on first use (the Fashion-MNIST files are read then)."""
    lvis_json.register_generated_lvis(
        prefix, root, lambda: ensure_generated(spec, root), class_names()
    )
