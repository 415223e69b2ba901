"""LVIS evaluation speed and memory: the fast engine against lvis-api on LVIS-shaped data.

Generates LVIS-shaped ground truth (1203 classes with LVIS v1's frequencies, negative and
not-exhaustive lists, ~6 polygon masks per image of 256-640 px) and exactly 300 detections per
image (with RLE masks) into a temporary folder, then evaluates bbox and segm, each engine in its
own subprocess (peak RSS from ``ru_maxrss``), alternating engines. The fast engine reads the
predictions as :class:`FastLVISEvaluator` holds them after its per-image ``process`` (cut,
federated filter, masks only where the class is present, as arrays); lvis-api reads the results
json, as detectron2 hands it over. Times include loading the ground truth and results.

    python tools/benchmark_lvis_eval.py             # fast at 500..19809, lvis-api at 500, 2000
    python tools/benchmark_lvis_eval.py --quick     # 300 images, both engines
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

from iif_d2.machine import describe_machine

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
    from iif_d2.lvis_eval import LVISGroundTruth
    from iif_d2.lvis_eval.engine import compact
    from iif_d2.lvis_eval.synthetic import make_dataset, to_results

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


def _worker(engine, folder):
    """Evaluate bbox and segm; print one json line (seconds, metrics, peak RSS)."""
    import torch

    torch.set_num_threads(1)
    out = {"seconds": {}, "metrics": {}}
    if engine == "fast":
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
            out["metrics"][task] = summarize(evaluate(gt, d, task))
            out["seconds"][task] = time.perf_counter() - t0 + load / 2
    else:
        from lvis import LVIS, LVISEval, LVISResults

        from iif_d2.compat import numpy_float_alias

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
        f"{'images':>7} {'engine':>9} {'bbox s':>8} {'segm s':>8} {'total s':>8} {'peak GB':>8}"
    )
    print(header + f" {'x faster':>8} {'max |diff|':>10}")
    for n in sorted(set(args.sizes) | set(args.ref_sizes)):
        with tempfile.TemporaryDirectory(prefix="lvis_bench_") as folder:
            with_ref = n in args.ref_sizes
            t0 = time.perf_counter()
            _run(
                ["--generate", str(n), folder, "1" if with_ref else "0", "--seed", str(args.seed)],
                env,
            )
            print(f"  (generated {n} images in {time.perf_counter() - t0:.0f} s)", flush=True)
            engines = (["lvis-api", "fast"] if with_ref else ["fast"]) * args.repeats
            runs = {}
            for engine in engines:  # alternating
                runs.setdefault(engine, []).append(_run(["--worker", engine, folder], env))
            best = {e: min(r, key=lambda x: sum(x["seconds"].values())) for e, r in runs.items()}
            for engine, r in best.items():
                total = sum(r["seconds"].values())
                line = (
                    f"{n:>7} {engine:>9} {r['seconds']['bbox']:>8.1f} {r['seconds']['segm']:>8.1f}"
                )
                line += f" {total:>8.1f} {r['maxrss_gb']:>8.2f}"
                if engine == "fast" and "lvis-api" in best:
                    ref = best["lvis-api"]
                    ratio = sum(ref["seconds"].values()) / total
                    diff = max(
                        abs(r["metrics"][t][k] - ref["metrics"][t][k])
                        for t in ref["metrics"]
                        for k in ref["metrics"][t]
                    )
                    line += f" {ratio:>8.1f} {diff:>10.1e}"
                print(line, flush=True)


if __name__ == "__main__":
    main()
