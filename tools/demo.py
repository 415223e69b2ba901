#!/usr/bin/env python
"""`make demo`: train a small Mask R-CNN with IIF on SynthLT and print its LVIS metrics.

Generates the synthetic long-tailed dataset on first use, trains
configs/SynthLT-InstanceSegmentation/mask_rcnn_R_18_FPN_iif.yaml through train_net.py (on the GPU
when there is one), evaluates with the LVIS evaluator, and prints box and mask AP, AP50, APr,
APc, APf next to those of the same model untrained. An interrupted demo resumes where it
stopped (``--resume``); the full log is in OUTPUT_DIR/log.txt.

    python tools/demo.py [--output-dir output/demo] [train_net.py config overrides ...]
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    REPO, "configs", "SynthLT-InstanceSegmentation", "mask_rcnn_R_18_FPN_iif.yaml"
)
METRICS = ("AP", "AP50", "APr", "APc", "APf")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _last_metrics(path: str) -> dict:
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.update(json.loads(line))
                except ValueError:
                    pass
    return rows


def run_train_net(output_dir: str, opts, *, eval_only=False, progress_total=None) -> dict:
    """Run train_net.py; show one progress line; return its evaluation results."""
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG]
    cmd += ["--eval-only"] if eval_only else ["--resume"]
    cmd += ["OUTPUT_DIR", output_dir, "MODEL.DEVICE", _device(), *opts]
    metrics_file = os.path.join(output_dir, "metrics.json")
    start = time.time()
    with open(os.path.join(output_dir, "demo_stdout.log"), "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        while proc.poll() is None:
            time.sleep(2)
            m = _last_metrics(metrics_file) if progress_total else {}
            if "iteration" in m:
                it, elapsed = min(m["iteration"] + 1, progress_total), time.time() - start
                loss = m.get("total_loss", float("nan"))
                print(
                    f"\r[demo] training {it}/{progress_total}  loss {loss:.3f}  "
                    f"elapsed {elapsed / 60:.1f} min",
                    end="",
                    flush=True,
                )
    print()
    if proc.returncode:
        sys.exit(f"train_net.py failed (exit {proc.returncode}); see {output_dir}/log.txt")
    with open(os.path.join(output_dir, "inference", "results.json")) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "demo"))
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    max_iter = _max_iter(args.opts)
    print(f"[demo] IIF Mask R-CNN on SynthLT, {max_iter} iterations on {_device()}")
    t0 = time.time()
    untrained = run_train_net(
        os.path.join(args.output_dir, "untrained"),
        ["MODEL.WEIGHTS", ""] + args.opts,
        eval_only=True,
    )
    trained = run_train_net(args.output_dir, args.opts, progress_total=max_iter)
    print(f"[demo] done in {(time.time() - t0) / 60:.1f} min. SynthLT val, LVIS evaluation:")
    print(f"{'model':<12}{'task':<6}" + "".join(f"{k:>8}" for k in METRICS))
    for name, res in (("untrained", untrained), ("IIF trained", trained)):
        for task in ("bbox", "segm"):
            row = "".join(f"{res[task].get(k, float('nan')):8.1f}" for k in METRICS)
            print(f"{name:<12}{task:<6}{row}")


def _max_iter(opts) -> int:
    from iif_d2 import add_iif_config  # first: detectron2 compatibility shims

    # isort: split
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg.SOLVER.MAX_ITER


if __name__ == "__main__":
    main()
