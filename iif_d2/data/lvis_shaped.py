"""LVIS-shaped: a synthetic instance-segmentation set with LVIS v1's exact long tail.

At full size, train has LVIS v1 train's 100,170 images and, for each of its 1203 classes,
exactly the image count and instance count of ``lvis_v1_train.csv``; val has LVIS v1 val's
19,809 images. A reduced spec scales every count by ``train_images / 100170`` (at least one
image per class, so many classes keep exactly one), keeping LVIS's class list and its r/c/f
frequency groups. Images are small (``min_size``-``max_size`` px, JPEG); an instance is a
star-shaped polygon whose vertex count, aspect and two-tone colours depend on its class;
annotations are the polygons as drawn (bbox = polygon bounds, area = polygon area), larger
ones drawn first. Images carry LVIS's ``neg_category_ids`` (sampled among the absent classes)
and ``not_exhaustive_category_ids`` (a few present classes). Everything is deterministic from
the spec; generation happens once per spec, under a file lock, published by renaming a
complete temporary folder.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw

from iif_d2.data.synthlt import background

__all__ = [
    "LVISShapedSpec",
    "LVIS_SHAPED",
    "LVIS_SHAPED_MINI",
    "assign_classes",
    "class_targets",
    "dataset_dir",
    "generate_lvis_shaped",
    "lvis_classes",
    "register_lvis_shaped",
    "class_layout",
]

logger = logging.getLogger(__name__)
COUNTS_FILE = "iif_d2://lvis_v1_train.csv"
FORMAT_VERSION = 1  # part of the cache key: bump when the generated content changes
MAX_VERTICES = 8
NEG_PER_IMAGE = 10.0  # mean number of verified-absent classes per image
NOT_EXHAUSTIVE_RATE = 0.05  # share of present (image, class) pairs marked not exhaustive
CAPACITY_SHAPE = 1.0  # gamma shape of the classes-per-image spread (smaller: more skewed)


@dataclasses.dataclass(frozen=True)
class LVISShapedSpec:
    """What to generate; the whole spec is the cache key.

    Attributes:
        train_images: train images; 100170 (LVIS v1 train) gives the CSV's counts exactly.
        val_images: val images (LVIS v1 val has 19809).
        min_size: smallest image side in px (images are square).
        max_size: largest image side in px.
        seed: random seed.
    """

    train_images: int = 100_170
    val_images: int = 19_809
    min_size: int = 32
    max_size: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.train_images < 1 or self.val_images < 1:
            raise ValueError(
                f"LVISShapedSpec needs train_images >= 1 and val_images >= 1, got "
                f"{self.train_images} and {self.val_images}."
            )
        if not 16 <= self.min_size <= self.max_size:
            raise ValueError(
                f"LVISShapedSpec needs 16 <= min_size <= max_size, got min_size "
                f"{self.min_size} and max_size {self.max_size}."
            )


LVIS_SHAPED = LVISShapedSpec()
LVIS_SHAPED_MINI = LVISShapedSpec(train_images=2000, val_images=200)


@functools.lru_cache(maxsize=None)
def lvis_classes() -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray, int]:
    """LVIS v1 train's classes from the shipped counts CSV.

    Returns:
        (names, image_counts, instance_counts, num_images), in category-id order.
    """
    from iif_d2.data.class_stats import load_counts_file

    stats = load_counts_file(COUNTS_FILE)
    images, instances = (
        np.array(counts, dtype=np.int64) for counts in (stats.image_counts, stats.instance_counts)
    )
    images.setflags(write=False)  # shared by every caller
    instances.setflags(write=False)
    return tuple(stats.class_names), images, instances, int(stats.num_images)


def _frequency(image_counts: np.ndarray) -> List[str]:
    return ["r" if n <= 10 else "c" if n <= 100 else "f" for n in image_counts.tolist()]


def class_targets(spec: LVISShapedSpec, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Per-class image and instance counts that ``split`` is generated with.

    LVIS v1 train's counts scaled by ``images / 100170`` and rounded, with at least one image
    per class and at least one instance per image; the identity at full train size.

    Returns:
        (image_counts, instance_counts), int64 arrays in category-id order.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}.")
    _, images, instances, num_images = lvis_classes()
    n = spec.train_images if split == "train" else spec.val_images
    scale = n / num_images
    k = np.minimum(np.maximum(1, np.rint(images * scale).astype(np.int64)), n)
    return k, np.maximum(k, np.rint(instances * scale).astype(np.int64))


def _capacities(total: int, num_images: int, skewed: bool, rng) -> np.ndarray:
    """Classes per image: at least one each, summing to ``total``."""
    if not skewed:
        return np.full(num_images, total // num_images) + (
            np.arange(num_images) < total % num_images
        )
    weights = rng.gamma(CAPACITY_SHAPE, size=num_images)
    return 1 + rng.multinomial(total - num_images, weights / weights.sum())


def _realise(image_counts: np.ndarray, capacities: np.ndarray, rng):
    """Bipartite graph with the given degrees (Gale-Ryser greedy), or None if none exists.

    Each class, in random order, takes the images with the most remaining capacity (ties broken
    at random); this finds a realisation whenever one exists.
    """
    residual = capacities.astype(np.float64)
    images, classes = [], []
    for c in rng.permutation(len(image_counts)):
        k = int(image_counts[c])
        chosen = np.argpartition(-(residual + rng.random(len(residual))), k - 1)[:k]
        if residual[chosen].min() < 1:
            return None
        residual[chosen] -= 1
        images.append(chosen)
        classes.append(np.full(k, c))
    return np.concatenate(images), np.concatenate(classes)


def assign_classes(image_counts, instance_counts, num_images: int, rng: np.random.Generator):
    """Place each class in exactly ``image_counts[c]`` distinct images, with
    ``instance_counts[c]`` instances in all, every one of ``num_images`` images non-empty.

    Args:
        image_counts: images per class (each in [1, num_images]).
        instance_counts: instances per class (each >= its image count).
        num_images: number of images; at most ``sum(image_counts)``.
        rng: numpy Generator.

    Returns:
        (image, class, instances) int64 arrays, one entry per (image, class) pair, sorted by
        image then class; images and classes are 0-based.
    """
    k = np.asarray(image_counts, dtype=np.int64)
    n = np.asarray(instance_counts, dtype=np.int64)
    if k.shape != n.shape or k.ndim != 1 or len(k) == 0:
        raise ValueError("image_counts and instance_counts must be equal-length, non-empty lists.")
    if k.min() < 1 or k.max() > num_images:
        raise ValueError(
            f"Every image count must lie in [1, num_images={num_images}], got "
            f"[{k.min()}, {k.max()}]."
        )
    if (n < k).any():
        c = int(np.argmax(n < k))
        raise ValueError(f"Class {c} has {n[c]} instances in {k[c]} images; need >= 1 per image.")
    if k.sum() < num_images:
        raise ValueError(
            f"sum(image_counts) = {k.sum()} (image, class) pairs cannot cover {num_images} "
            "images with one class each; use fewer images."
        )
    pairs = None
    for skewed in (True, False):  # equal capacities are always realisable (round robin)
        caps = _capacities(int(k.sum()), num_images, skewed, rng)
        if caps.max() <= len(k):
            pairs = _realise(k, caps, rng)
        if pairs is not None:
            break
    image, cls = pairs
    order = np.lexsort((cls, image))
    image, cls = image[order], cls[order]
    # instances: one per pair, the rest spread over the class's images with skewed weights
    counts = np.ones(len(image), dtype=np.int64)
    by_class = np.argsort(cls, kind="stable")
    starts = np.concatenate([[0], np.cumsum(k)])
    weights = rng.gamma(0.5, size=len(image)) + 1e-9
    for c in np.nonzero(n > k)[0]:
        idx = by_class[starts[c] : starts[c + 1]]
        p = weights[idx] / weights[idx].sum()
        counts[idx] += rng.multinomial(int(n[c] - k[c]), p)
    return image, cls, counts


def _class_looks(num_classes: int):
    """Per class: vertex count, aspect, outer colour, inner colour (fixed across seeds)."""
    c = np.arange(num_classes)
    palette = np.random.RandomState(12345).randint(0, 256, size=(num_classes, 2, 3))
    aspect = np.array([1.0, 0.8, 0.6, 0.45])[(c // 6) % 4]
    return 3 + c % 6, aspect, palette[:, 0], palette[:, 1]


def _geometry(cls: np.ndarray, image: np.ndarray, sizes: np.ndarray, rng):
    """Polygons of all instances.

    Returns:
        vertices [I, MAX_VERTICES, 2] rounded to 0.1 px (the last one repeated past the class's
        vertex count), vertex counts [I], radii [I] and centres [I, 2].
    """
    nv, aspect, _, _ = _class_looks(int(cls.max()) + 1)
    per_image = np.bincount(image, minlength=len(sizes))
    s = sizes[image].astype(np.float64)
    r_max = s / 2 - 0.5
    r = np.clip(rng.uniform(0.4, 1.0, len(cls)) * 0.7 * s / np.sqrt(per_image[image]), 2.5, r_max)
    centre = rng.uniform(r, s - r, size=(2, len(cls))).T
    v = nv[cls]
    step = 2 * np.pi / v
    slot = np.minimum(np.arange(MAX_VERTICES)[None], v[:, None] - 1)  # repeat the last vertex
    theta = (
        slot * step[:, None] + rng.uniform(-0.25, 0.25, (len(cls), MAX_VERTICES)) * step[:, None]
    )
    rho = r[:, None] * rng.uniform(0.75, 1.0, (len(cls), MAX_VERTICES))
    x, y = rho * np.cos(theta), rho * np.sin(theta) * aspect[cls][:, None]
    psi = rng.uniform(0, 2 * np.pi, len(cls))[:, None]
    pts = np.stack([x * np.cos(psi) - y * np.sin(psi), x * np.sin(psi) + y * np.cos(psi)], -1)
    pts = pts + centre[:, None]
    last = np.take_along_axis(pts, (v - 1)[:, None, None].repeat(2, 2), 1)
    pts = np.where((np.arange(MAX_VERTICES) < v[:, None])[..., None], pts, last)
    return np.round(pts, 1), v, r, centre


def _area(pts: np.ndarray) -> np.ndarray:
    x, y = pts[..., 0], pts[..., 1]
    return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))


def _image_lists(cls, image, num_images: int, num_classes: int, rng):
    """neg_category_ids and not_exhaustive_category_ids (1-based) of every image."""
    starts = np.searchsorted(image, np.arange(num_images + 1))
    not_exh = rng.random(len(cls)) < NOT_EXHAUSTIVE_RATE
    n_neg = rng.poisson(NEG_PER_IMAGE, num_images)
    negs, partial = [], []
    for i in range(num_images):
        present = cls[starts[i] : starts[i + 1]]
        draw = rng.choice(num_classes, min(num_classes, n_neg[i] + len(present)), replace=False)
        absent = draw[~np.isin(draw, present)][: n_neg[i]]
        negs.append(sorted((absent + 1).tolist()))
        partial.append((present[not_exh[starts[i] : starts[i + 1]]] + 1).tolist())
    return negs, partial


def _write_split(spec: LVISShapedSpec, split: str, folder: str) -> Dict:
    """Render ``split`` into ``folder/split`` and return its LVIS dict (without categories)."""
    names = lvis_classes()[0]
    num_images = spec.train_images if split == "train" else spec.val_images
    offset = 0 if split == "train" else 1
    rng = np.random.default_rng([spec.seed, offset])
    background_rng = np.random.RandomState((2 * spec.seed + offset) % 2**32)
    image, cls, counts = assign_classes(*class_targets(spec, split), num_images, rng)
    negs, partial = _image_lists(cls, image, num_images, len(names), rng)
    inst_image, inst_cls = np.repeat(image, counts), np.repeat(cls, counts)
    per_image = np.bincount(inst_image, minlength=num_images)
    jitter = rng.integers(0, 32, num_images)
    sizes = np.clip(np.rint(20 * np.sqrt(per_image)) + jitter, spec.min_size, spec.max_size)
    pts, nv, radius, centre = _geometry(inst_cls, inst_image, sizes.astype(np.int64), rng)
    order = np.lexsort((-radius, inst_image))  # per image, the large ones drawn first
    pts, nv, inst_cls, inst_image = pts[order], nv[order], inst_cls[order], inst_image[order]
    centre = centre[order][:, None]
    areas = np.round(_area(pts), 2).tolist()
    boxes = np.round(np.concatenate([pts.min(1), pts.max(1) - pts.min(1)], 1), 1).tolist()
    _, _, outer, inner = _class_looks(len(names))
    shade = rng.integers(-12, 13, size=(len(inst_cls), 1))
    outer = np.clip(outer[inst_cls] + shade, 0, 255).tolist()
    inner = np.clip(inner[inst_cls] + shade, 0, 255).tolist()
    inner_pts = np.round(centre + 0.5 * (pts - centre), 1).reshape(len(pts), -1).tolist()
    flat, nv, inst_cls = pts.reshape(len(pts), -1).tolist(), nv.tolist(), inst_cls.tolist()
    os.makedirs(os.path.join(folder, split))
    starts = np.searchsorted(inst_image, np.arange(num_images + 1)).tolist()
    images, annotations = [], []
    for i in range(num_images):
        size = int(sizes[i])
        canvas = Image.fromarray(background(size, 0, background_rng).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for j in range(starts[i], starts[i + 1]):
            draw.polygon(flat[j][: 2 * nv[j]], fill=tuple(outer[j]))
            draw.polygon(inner_pts[j][: 2 * nv[j]], fill=tuple(inner[j]))
            annotations.append(
                {
                    "id": j + 1,
                    "image_id": i + 1,
                    "category_id": inst_cls[j] + 1,
                    "bbox": boxes[j],
                    "area": areas[j],
                    "segmentation": [flat[j][: 2 * nv[j]]],
                }
            )
        file_name = f"{split}/{i + 1:012d}.jpg"
        canvas.save(os.path.join(folder, file_name), quality=90)
        images.append(
            {
                "id": i + 1,
                "width": size,
                "height": size,
                # detectron2 v0.6 joins coco_url's last two parts; newer ones may use file_name
                "file_name": file_name,
                "coco_url": f"lvis-shaped://{file_name}",
                "neg_category_ids": negs[i],
                "not_exhaustive_category_ids": partial[i],
                "license": 0,
            }
        )
    return {"images": images, "annotations": annotations}


def _categories(spec: LVISShapedSpec) -> List[Dict]:
    names, lvis_images, _, _ = lvis_classes()
    images, instances = class_targets(spec, "train")
    return [
        {
            "id": c + 1,
            "name": name,
            "synset": f"{name}.n.01",
            "synonyms": [name],
            "def": f"synthetic LVIS-shaped class {name}",
            "frequency": freq,  # LVIS's group of the class, whatever the scale
            "image_count": int(images[c]),
            "instance_count": int(instances[c]),
        }
        for c, (name, freq) in enumerate(zip(names, _frequency(lvis_images)))
    ]


def dataset_dir(root: str, spec: LVISShapedSpec) -> str:
    """The folder of ``spec``'s data under ``root``, named after the spec and its hash."""
    key = json.dumps(dict(dataclasses.asdict(spec), format=FORMAT_VERSION), sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return os.path.join(root, f"train{spec.train_images}-val{spec.val_images}-{digest}")


def _is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, "spec.json"))  # written last, before the rename


def _write_dataset(spec: LVISShapedSpec, folder: str) -> None:
    categories = _categories(spec)
    for split in ("train", "val"):
        data = _write_split(spec, split, folder)
        data["categories"] = categories
        data["info"] = {"description": f"iif-d2 LVIS-shaped {split}", "version": "1.0"}
        data["licenses"] = [{"id": 0, "name": "generated", "url": ""}]
        with open(os.path.join(folder, f"{split}.json"), "w") as f:
            f.write(json.dumps(data, separators=(",", ":")))  # the C encoder; dump() is Python
    with open(os.path.join(folder, "spec.json"), "w") as f:
        json.dump(dict(dataclasses.asdict(spec), format=FORMAT_VERSION), f)


def generate_lvis_shaped(root: str, spec: LVISShapedSpec = LVIS_SHAPED) -> str:
    """Generate ``spec``'s dataset under ``root`` unless it is there already.

    Safe from several processes at once: one generates under a file lock into a temporary
    folder and renames it into place; the others wait and find it done.

    Args:
        root: parent folder, e.g. ``$DETECTRON2_DATASETS/lvis_shaped``.
        spec: what to generate.

    Returns:
        the dataset folder: ``train.json``, ``val.json``, ``train/``, ``val/``, ``spec.json``.
    """
    import fcntl

    folder = dataset_dir(root, spec)
    if _is_complete(folder):
        return folder
    os.makedirs(root, exist_ok=True)
    base = os.path.basename(folder)
    with open(os.path.join(root, f".{base}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(folder):
            return folder
        for stale in os.listdir(root):  # left by a killed generator of this spec
            if stale.startswith(f".{base}.tmp"):
                shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
        logger.info("Generating the LVIS-shaped dataset %s ...", folder)
        tmp = tempfile.mkdtemp(prefix=f".{base}.tmp", dir=root)
        try:
            _write_dataset(spec, tmp)
            os.chmod(tmp, 0o755)  # mkdtemp's folder is private to its creator
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete copy made by hand
            os.rename(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


_PLACEHOLDER_POLYGON = [[0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]]  # the placeholder box's outline


def class_layout(spec: LVISShapedSpec, split: str = "train") -> List[Dict]:
    """The dataset dicts of ``split`` without images: which classes each image holds, and how
    many instances, exactly as the generated set has them (the same draws), with placeholder
    boxes and outlines. Enough for everything counted on the training set (class counts, FASA's
    hold-out, repeat factors, the epoch length) at LVIS scale in seconds, without rendering a
    pixel.

    Returns:
        list of dicts with ``image_id`` (1-based), ``annotations`` (``category_id`` 0-based,
        as detectron2 loads LVIS v1); no image size.
    """
    from detectron2.structures import BoxMode

    num_images = spec.train_images if split == "train" else spec.val_images
    rng = np.random.default_rng([spec.seed, 0 if split == "train" else 1])
    image, cls, counts = assign_classes(*class_targets(spec, split), num_images, rng)
    dicts = [{"image_id": i + 1, "annotations": []} for i in range(num_images)]
    for im, c, n in zip(image.tolist(), cls.tolist(), counts.tolist()):
        ann = {
            "category_id": c,
            "iscrowd": 0,
            "bbox": [0, 0, 1, 1],
            "bbox_mode": BoxMode.XYWH_ABS,
            "segmentation": _PLACEHOLDER_POLYGON,  # one list shared by every annotation
        }
        dicts[im]["annotations"].extend(dict(ann) for _ in range(n))
    return dicts


def _load_split(root: str, spec: LVISShapedSpec, split: str):
    from detectron2.data.datasets.lvis import load_lvis_json

    folder = generate_lvis_shaped(root, spec)
    return load_lvis_json(os.path.join(folder, f"{split}.json"), folder + os.sep)


def register_lvis_shaped(name_prefix: str, root: str, spec: LVISShapedSpec = LVIS_SHAPED):
    """Register ``<name_prefix>_train`` and ``<name_prefix>_val`` (LVIS evaluation),
    generated under ``root`` on first load.

    Args:
        name_prefix: e.g. ``lvis_shaped``.
        root: parent folder of the generated data, e.g. ``$DETECTRON2_DATASETS/lvis_shaped``.
        spec: what to generate.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    folder = dataset_dir(root, spec)
    for split in ("train", "val"):
        name = f"{name_prefix}_{split}"
        DatasetCatalog.register(name, functools.partial(_load_split, root, spec, split))
        MetadataCatalog.get(name).set(
            json_file=os.path.join(folder, f"{split}.json"),
            generated_on_first_use=True,  # no files to check before the run
            image_root=folder,
            evaluator_type="lvis",
            thing_classes=list(lvis_classes()[0]),
        )
