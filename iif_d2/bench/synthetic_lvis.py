"""Random LVIS-shaped ground truth and detections, for tests and the benchmark."""

import numpy as np
import pycocotools.mask as mask_utils

from iif_d2.lvis_eval.data import LVISDetections, mask_areas

__all__ = ["make_dataset", "to_results"]


def _quad(rng, box):
    """A random quadrilateral inside an XYWH box, as a flat polygon."""
    x, y, w, h = box
    fx = rng.uniform(0.0, 0.3, 4)
    fy = rng.uniform(0.0, 0.3, 4)
    pts = [x + fx[0] * w, y + fy[0] * h, x + (1 - fx[1]) * w, y + fy[1] * h]
    pts += [x + (1 - fx[2]) * w, y + (1 - fy[2]) * h, x + fx[3] * w, y + (1 - fy[3]) * h]
    return [float(p) for p in pts]


def _quads(rng, boxes):
    """Random quadrilaterals inside XYWH boxes (N, 4), as flat polygons."""
    f = rng.uniform(0.0, 0.3, (len(boxes), 8))
    x, y, w, h = (boxes[:, i : i + 1] for i in range(4))
    xs = x + np.concatenate([f[:, :1], 1 - f[:, 1:3], f[:, 3:4]], axis=1) * w
    ys = y + np.concatenate([f[:, 4:6], 1 - f[:, 6:8]], axis=1) * h
    return np.stack([xs, ys], axis=2).reshape(len(boxes), 8).tolist()


def _jitter(rng, boxes, scale, size):
    """Jittered copies of XYWH boxes (N, 4), kept inside the image."""
    x, y, w, h = boxes.T
    x = np.clip(x + rng.normal(0, 1, len(x)) * scale * w, 0, size[1] - 2)
    y = np.clip(y + rng.normal(0, 1, len(x)) * scale * h, 0, size[0] - 2)
    w = np.clip(w * np.exp(rng.normal(0, 1, len(x)) * scale), 1, size[1] - x)
    h = np.clip(h * np.exp(rng.normal(0, 1, len(x)) * scale), 1, size[0] - y)
    return np.stack([x, y, w, h], axis=1)


def _random_boxes(rng, n, size, max_frac=0.5):
    """Random XYWH boxes (n, 4) inside an image of ``size`` (h, w)."""
    h_img, w_img = size
    w = rng.uniform(2, max_frac * w_img, n) * rng.uniform(0.1, 1, n)
    h = rng.uniform(2, max_frac * h_img, n) * rng.uniform(0.1, 1, n)
    x = rng.uniform(0, 1, n) * (w_img - w)
    y = rng.uniform(0, 1, n) * (h_img - h)
    return np.stack([x, y, w, h], axis=1)


def _detections(rng, nd, gt_boxes, gt_cats, neg, num_cats, size):
    """``nd`` detections: half jittered ground truth (a fifth of those with a negative class),
    the rest random boxes of random or negative classes."""
    ng = len(gt_cats)
    from_gt = (rng.random(nd) < 0.5) & (ng > 0)
    g = rng.integers(max(ng, 1), size=nd)
    boxes = _random_boxes(rng, nd, size)
    cats = rng.integers(1, num_cats + 1, nd)
    if len(neg):
        neg_pick = rng.choice(neg, size=nd)
        cats = np.where(rng.random(nd) < 0.3, neg_pick, cats)
    if ng:
        jit = _jitter(rng, gt_boxes[g], rng.uniform(0.02, 0.3, nd), size)
        boxes = np.where(from_gt[:, None], jit, boxes)
        own = gt_cats[g] if not len(neg) else np.where(rng.random(nd) < 0.8, gt_cats[g], neg_pick)
        cats = np.where(from_gt, own, cats)
    return boxes, cats.astype(np.int64)


def make_dataset(
    num_images,
    frequencies,
    seed=0,
    gt_per_image=6,
    dets_per_image=300,
    num_neg=8,
    num_not_exhaustive=1,
    empty_mask_frac=0.0,
    score_decimals=None,
    image_sizes=(256, 640),
    with_masks=True,
):
    """A random LVIS-shaped annotation dict and detections.

    Each image has ~``gt_per_image`` objects (Poisson) of a few classes, negative and
    not-exhaustive class lists, and ``dets_per_image`` detections (an int, or a callable
    ``rng -> int``): about half jittered copies of the ground truth (some with a confusable class),
    the rest random boxes and classes.

    Args:
        num_images: images.
        frequencies: per class "r"/"c"/"f" (class ids 1..K); frequent classes appear more often.
        seed: random seed.
        gt_per_image, dets_per_image, num_neg, num_not_exhaustive: per-image counts.
        empty_mask_frac: fraction of detections with an empty mask.
        score_decimals: round scores (ties) if given.
        image_sizes: (min, max) image side.
        with_masks: give polygons to ground truth and RLE masks to detections.

    Returns:
        (annotation dict, LVISDetections with bbox, RLE masks and mask areas)
    """
    rng = np.random.default_rng(seed)
    freq = np.asarray(frequencies)
    num_cats = len(freq)
    weight = np.select([freq == "f", freq == "c"], [30.0, 3.0], 0.3)
    weight = weight / weight.sum()
    images, anns, det_parts = [], [], []
    for i in range(num_images):
        size = tuple(int(s) for s in rng.integers(image_sizes[0], image_sizes[1] + 1, 2))
        img_id = 2 * i + 1  # sparse ids
        ng = int(rng.poisson(gt_per_image))
        present = rng.choice(num_cats, size=max(1, min(ng, 4)), replace=False, p=weight) + 1
        gt_cats = rng.choice(present, size=ng) if ng else np.zeros(0, dtype=int)
        others = np.setdiff1d(np.arange(1, num_cats + 1), present)
        neg = rng.choice(others, size=min(num_neg, len(others)), replace=False)
        nel = rng.choice(present, size=min(num_not_exhaustive, len(present)), replace=False)
        images.append(
            {
                "id": img_id,
                "height": size[0],
                "width": size[1],
                "neg_category_ids": [int(c) for c in neg],
                "not_exhaustive_category_ids": [int(c) for c in nel],
            }
        )
        gt_boxes = _random_boxes(rng, ng, size)
        for box, cat in zip(gt_boxes.tolist(), gt_cats):
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": int(cat), "bbox": box}
            if with_masks:
                poly = [_quad(rng, box)]
                ann["segmentation"] = poly
                rle = mask_utils.merge(mask_utils.frPyObjects(poly, size[0], size[1]))
                ann["area"] = float(mask_utils.area(rle))
            else:
                ann["area"] = box[2] * box[3]
            anns.append(ann)
        nd = dets_per_image(rng) if callable(dets_per_image) else dets_per_image
        boxes, cats = _detections(rng, nd, gt_boxes, gt_cats, neg, num_cats, size)
        scores = rng.random(nd)
        if score_decimals is not None:
            scores = np.round(scores, score_decimals)
        part = {"img": np.full(nd, img_id), "cat": cats, "score": scores, "bbox": boxes}
        if with_masks and nd:
            polys = _quads(rng, boxes)
            rles = mask_utils.frPyObjects(polys, size[0], size[1])
            empty = np.flatnonzero(rng.random(nd) < empty_mask_frac)
            if len(empty):
                zero = mask_utils.encode(np.zeros((size[0], size[1], 1), np.uint8, order="F"))[0]
                for e in empty:
                    rles[e] = zero
            part["counts"] = [r["counts"] for r in rles]
            part["sizes"] = np.tile(size, (nd, 1))
            part["mask_area"] = mask_areas(rles)
        det_parts.append(part)
    categories = [
        {"id": k + 1, "name": f"class_{k + 1}", "frequency": str(f)} for k, f in enumerate(freq)
    ]
    gt = {"images": images, "annotations": anns, "categories": categories}
    bbox = np.concatenate([p["bbox"] for p in det_parts]).reshape(-1, 4)
    dets = LVISDetections(
        image_id=np.concatenate([p["img"] for p in det_parts]).astype(np.int64),
        category_id=np.concatenate([p["cat"] for p in det_parts]),
        score=np.concatenate([p["score"] for p in det_parts]),
        area=bbox[:, 2] * bbox[:, 3],
        bbox=bbox,
    )
    if with_masks:
        dets.rle_counts = [c for p in det_parts for c in p.get("counts", [])]
        dets.rle_sizes = np.concatenate([p.get("sizes", np.zeros((0, 2))) for p in det_parts])
        dets.rle_sizes = dets.rle_sizes.astype(np.int64).reshape(-1, 2)
        dets.mask_area = np.concatenate([p.get("mask_area", np.zeros(0)) for p in det_parts])
    return gt, dets


def to_results(dets: LVISDetections, with_bbox=True, with_segm=True) -> list:
    """lvis-api's results list of :class:`LVISDetections`."""
    out = []
    for i in range(len(dets)):
        r = {
            "image_id": int(dets.image_id[i]),
            "category_id": int(dets.category_id[i]),
            "score": float(dets.score[i]),
        }
        if with_bbox:
            r["bbox"] = [float(v) for v in dets.bbox[i]]
        if with_segm:
            c = dets.rle_counts[i]
            r["segmentation"] = {
                "size": [int(s) for s in dets.rle_sizes[i]],
                "counts": c.decode() if isinstance(c, bytes) else c,
            }
        out.append(r)
    return out
