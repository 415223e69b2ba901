"""LVIS evaluation speed and memory: the fast engine against lvis-api and faster-coco-eval
(``lvis_style=True``) on LVIS-shaped data.

Generates LVIS-shaped ground truth (1203 classes with LVIS v1's frequencies, negative and
not-exhaustive lists, ~6 polygon masks per image of 256-640 px) and exactly 300 detections per
image (with RLE masks) into a temporary folder, then evaluates bbox and segm, each engine in its
own subprocess (peak RSS from ``ru_maxrss``), alternating engines. The fast engine reads the
predictions as :class:`FastLVISEvaluator` holds them after its per-image ``process`` (cut,
federated filter, masks only where the class is present, as arrays); lvis-api reads the results
json, as detectron2 hands it over. Times include loading the ground truth and results.

    python tools/benchmark_lvis_eval.py             # fast at 500..19809, lvis-api at 500, 2000
    python tools/benchmark_lvis_eval.py --quick     # 300 images, both engines
    python tools/benchmark_lvis_eval.py --sizes 19809 --ref-sizes --ranks 2
    python tools/benchmark_lvis_eval.py --sizes 19809 --ref-sizes --fixed-pooled

``--ranks R`` adds FastLVISEvaluator's distributed path, simulated in one process: the images
split into R contiguous shards, each matched apart (as each rank matches its own images), the
packed matches (what a rank sends) unpacked and accumulated (the main rank's work). Its time is
the slowest shard's matching plus the main rank's accumulation; "sent MB" compares what the
ranks send together: the packed matches against the compact predictions (boxes, scores,
categories, mask areas, RLEs) that would be gathered otherwise. The metrics must equal the
single-process ones (max |diff| against "fast").
"""

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from iif_d2.utils.machine import describe_machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSV = os.path.join(ROOT, "iif_d2", "data", "lvis_v1_train.csv")
CHUNK = 500


def _frequencies():
    with open(CSV) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    return [r["frequency"] for r in rows]


def _generate(num_images, folder, full_results, seed):
    """Write gt.json, compact.npz (the fast engine's input) and, if asked, lvis-api's results
    jsons, chunk by chunk (bounded memory)."""
    from iif_d2.bench.synthetic_lvis import make_dataset, to_results
    from iif_d2.lvis_eval import LVISGroundTruth
    from iif_d2.lvis_eval.engine import compact

    freqs = _frequencies()
    gt = {"images": [], "annotations": [], "categories": None}
    parts = []
    res_files = {t: open(os.path.join(folder, f"results_{t}.json"), "w") for t in ("bbox", "segm")}
    if full_results:
        for f in res_files.values():
            f.write("[")
    first = True
    for start in range(0, num_images, CHUNK):
        n = min(CHUNK, num_images - start)
        g, dets = make_dataset(n, freqs, seed=seed * 100003 + start)
        offset_img, offset_ann = 2 * start, len(gt["annotations"])
        for im in g["images"]:
            im["id"] += offset_img
        for a in g["annotations"]:
            a["image_id"] += offset_img
            a["id"] += offset_ann
        dets.image_id += offset_img
        gt["images"] += g["images"]
        gt["annotations"] += g["annotations"]
        gt["categories"] = g["categories"]
        parts.append(compact(LVISGroundTruth.from_dict(g, with_masks=False), dets))
        if full_results:
            for task, f in res_files.items():
                res = to_results(dets, with_bbox=task == "bbox", with_segm=task == "segm")
                f.write(("" if first else ",") + json.dumps(res)[1:-1])
            first = False
    for f in res_files.values():
        f.write("]" if full_results else "")
        f.close()
    with open(os.path.join(folder, "gt.json"), "w") as f:
        json.dump(gt, f)
    counts = [c for p in parts for c in p.rle_counts]
    lengths = np.array([-1 if c is None else len(c) for c in counts], dtype=np.int64)
    np.savez(
        os.path.join(folder, "compact.npz"),
        **{k: np.concatenate([getattr(p, k) for p in parts]) for k in _FIELDS},
        rle_lengths=lengths,
        rle_blob=np.frombuffer(b"".join(c for c in counts if c is not None), dtype=np.uint8),
    )


REF_AGAINST_LVIS_API = ("fast", "faster-coco-eval")  # compared with lvis-api; fast-R with fast
_FIELDS = ("image_id", "category_id", "score", "area", "bbox", "mask_area", "rle_sizes")


def _load_compact(path):
    from iif_d2.lvis_eval import LVISDetections

    z = np.load(path)
    blob = z["rle_blob"].tobytes()
    ends = np.cumsum(np.maximum(z["rle_lengths"], 0))
    counts = [
        None if n < 0 else blob[e - n : e] for n, e in zip(z["rle_lengths"].tolist(), ends.tolist())
    ]
    dets = LVISDetections(**{k: z[k] for k in _FIELDS if k != "mask_area"}, rle_counts=counts)
    dets.mask_area = z["mask_area"]
    return dets


def _take(dets, idx):
    from iif_d2.lvis_eval import LVISDetections

    out = LVISDetections(dets.image_id[idx], dets.category_id[idx], dets.score[idx], dets.area[idx])
    out.bbox = None if dets.bbox is None else dets.bbox[idx]
    if dets.rle_counts is not None:
        out.rle_counts = [dets.rle_counts[i] for i in idx.tolist()]
        out.rle_sizes = dets.rle_sizes[idx]
    return out


def _compact_bytes(dets, idx):
    """Bytes of the compact predictions the evaluator would gather otherwise (float32 boxes
    and scores, int64 categories, float64 mask areas, RLE strings)."""
    rles = sum(len(dets.rle_counts[i] or b"") for i in idx.tolist())
    return len(idx) * (16 + 4 + 8 + 8) + rles


def _sharded(gt, dets, task, ranks):
    """The distributed path in one process: (seconds, metrics, sent bytes packed, compact)."""
    import pickle

    from iif_d2.lvis_eval import engine

    images = np.unique(dets.image_id)
    bounds = np.linspace(0, len(images), ranks + 1).astype(int)
    sent, compact, shard_seconds = 0, 0, []
    packed = []
    for r in range(ranks):
        idx = np.flatnonzero(np.isin(dets.image_id, images[bounds[r] : bounds[r + 1]]))
        t0 = time.perf_counter()
        packed.append(engine.pack_matches(engine.match(gt, _take(dets, idx), task)))
        shard_seconds.append(time.perf_counter() - t0)
        sent += len(pickle.dumps(packed[-1], protocol=pickle.HIGHEST_PROTOCOL))
        compact += _compact_bytes(dets, idx)
    t0 = time.perf_counter()
    m = engine.concat_matches([engine.unpack_matches(p) for p in packed])
    metrics = engine.summarize(engine.accumulate(gt, m))
    return max(shard_seconds) + time.perf_counter() - t0, metrics, sent, compact


# faster-coco-eval's names for lvis-api's metrics
FCE_KEYS = {
    "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium",
    "APl": "AP_large", "APr": "APr", "APc": "APc", "APf": "APf",
}  # fmt: skip


def faster_coco_eval_metrics(folder, task):
    """faster-coco-eval's LVIS-style evaluation (``lvis_style=True``, 300 detections) of the
    results json, under lvis-api's metric names. Its ``maxDets`` caps per (image, category),
    lvis-api's per image: the generated results hold exactly 300 per image, so both see the
    same detections."""
    import contextlib
    import io

    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(folder, "gt.json"))
        dt = gt.loadRes(os.path.join(folder, f"results_{task}.json"))
        ev = COCOeval_faster(gt, dt, iouType=task, lvis_style=True, print_function=print)
        ev.params.maxDets = [300]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats_as_dict
    return {k: float(stats[v]) for k, v in FCE_KEYS.items()}


def _worker(engine, folder):
    """Evaluate bbox and segm; print one json line (seconds, metrics, peak RSS)."""
    import torch

    torch.set_num_threads(1)
    out = {"seconds": {}, "metrics": {}, "sent_mb": {}}
    if engine in ("fast", "fast+devil") or engine.startswith("fast-"):
        from iif_d2.lvis_eval import LVISDetections, LVISGroundTruth, evaluate, summarize

        t0 = time.perf_counter()
        gt = LVISGroundTruth.from_json(os.path.join(folder, "gt.json"))
        dets = _load_compact(os.path.join(folder, "compact.npz"))
        load = time.perf_counter() - t0
        for task in ("bbox", "segm"):
            t0 = time.perf_counter()
            d = dets
            if task == "segm":
                d = LVISDetections(
                    dets.image_id, dets.category_id, dets.score, dets.mask_area,
                    rle_counts=dets.rle_counts, rle_sizes=dets.rle_sizes,
                )  # fmt: skip
            if engine == "fast":
                out["metrics"][task] = summarize(evaluate(gt, d, task))
                out["seconds"][task] = time.perf_counter() - t0 + load / 2
                continue
            if engine == "fast+devil":  # AP-fixed and AP-pool (10,000 per class), no standard AP
                from iif_d2.lvis_eval.devil import fixed_and_pooled

                fixed, pooled = fixed_and_pooled(gt, d, task)
                out["metrics"][task] = {"AP-fixed": fixed["AP"], **pooled}
                out["seconds"][task] = time.perf_counter() - t0 + load / 2
                continue
            seconds, out["metrics"][task], sent, compact = _sharded(gt, d, task, int(engine[5:]))
            out["seconds"][task] = seconds + load / 2
            out["sent_mb"][task] = (sent / 2**20, compact / 2**20)
    elif engine == "faster-coco-eval":
        for task in ("bbox", "segm"):
            t0 = time.perf_counter()
            out["metrics"][task] = faster_coco_eval_metrics(folder, task)
            out["seconds"][task] = time.perf_counter() - t0
    else:
        from lvis import LVIS, LVISEval, LVISResults

        from iif_d2.utils.compat import numpy_float_alias

        for task in ("bbox", "segm"):
            t0 = time.perf_counter()
            with numpy_float_alias():
                lvis_gt = LVIS(os.path.join(folder, "gt.json"))
                res = LVISResults(lvis_gt, os.path.join(folder, f"results_{task}.json"))
                ev = LVISEval(lvis_gt, res, task)
                ev.run()
            out["metrics"][task] = {k: float(v) for k, v in ev.results.items()}
            out["seconds"][task] = time.perf_counter() - t0
            del lvis_gt, res, ev
    out["maxrss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def _run(args_list, env):
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__)] + args_list,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode != 0 or (not lines and "--worker" in args_list):
        raise RuntimeError(f"{args_list} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:]) if lines else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000, 19809])
    p.add_argument("--ref-sizes", type=int, nargs="*", default=[500, 2000], help="lvis-api's")
    p.add_argument("--repeats", type=int, default=1, help="runs per engine and size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="300 images, both engines")
    p.add_argument("--ranks", type=int, default=1, help="also the R-rank path (R > 1)")
    p.add_argument(
        "--fixed-pooled", action="store_true",
        help="also AP-fixed + AP-pool (fast engine, 10,000 detections per class), timed apart",
    )  # fmt: skip
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    p.add_argument("--generate", nargs=3, metavar=("N", "FOLDER", "FULL"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(*args.worker)
    if args.generate:
        n, folder, full = args.generate
        return _generate(int(n), folder, full == "1", args.seed)
    if args.quick:
        args.sizes, args.ref_sizes = [300], [300]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    print(f"hardware: {describe_machine()}; OMP/MKL/torch threads pinned to 1 per process")
    header = (
        f"{'images':>7} {'engine':>16} {'bbox s':>8} {'segm s':>8} {'total s':>8} {'peak GB':>8}"
    )
    print(header + f" {'x faster':>8} {'max |diff|':>10}  (against lvis-api; fast-R: against fast)")
    for n in sorted(set(args.sizes) | set(args.ref_sizes)):
        with tempfile.TemporaryDirectory(prefix="lvis_bench_") as folder:
            with_ref = n in args.ref_sizes
            t0 = time.perf_counter()
            _run(
                ["--generate", str(n), folder, "1" if with_ref else "0", "--seed", str(args.seed)],
                env,
            )
            print(f"  (generated {n} images in {time.perf_counter() - t0:.0f} s)", flush=True)
            engines = ["lvis-api", "faster-coco-eval", "fast"] if with_ref else ["fast"]
            engines += [f"fast-{args.ranks}"] if args.ranks > 1 else []
            engines = (engines + (["fast+devil"] if args.fixed_pooled else [])) * args.repeats
            runs = {}
            for engine in engines:  # alternating
                runs.setdefault(engine, []).append(_run(["--worker", engine, folder], env))
            best = {e: min(r, key=lambda x: sum(x["seconds"].values())) for e, r in runs.items()}
            for engine, r in best.items():
                total = sum(r["seconds"].values())
                line = (
                    f"{n:>7} {engine:>16} {r['seconds']['bbox']:>8.1f} {r['seconds']['segm']:>8.1f}"
                )
                line += f" {total:>8.1f} {r['maxrss_gb']:>8.2f}"
                ref = best.get("lvis-api") if engine in REF_AGAINST_LVIS_API else best["fast"]
                if engine not in ("lvis-api", "fast+devil") and ref is not None:
                    ratio = sum(ref["seconds"].values()) / total
                    diff = max(
                        abs(r["metrics"][t][k] - ref["metrics"][t][k])
                        for t in ref["metrics"]
                        for k in ref["metrics"][t]
                        if k in r["metrics"][t]  # faster-coco-eval: lvis-api's AP keys
                    )
                    line += f" {ratio:>8.1f} {diff:>10.1e}"
                if r["sent_mb"]:  # the compact predictions serve both tasks: counted once
                    sent = " + ".join(f"{v[0]:.0f} ({t})" for t, v in r["sent_mb"].items())
                    compact = next(iter(r["sent_mb"].values()))[1]
                    line += f"  sent MB {sent}; compact predictions {compact:.0f}"
                if engine == "fast+devil":
                    line += "  " + json.dumps(r["metrics"])
                print(line, flush=True)


if __name__ == "__main__":
    main()
