#!/usr/bin/env python
"""`make demo`: train a small Mask R-CNN with IIF on SynthLT, print its LVIS metrics and save
a few pictures of its predictions.

Three phases: generate the synthetic long-tailed dataset (first use only); train
configs/SynthLT-InstanceSegmentation/mask_rcnn_R_18_FPN_iif.yaml through train_net.py (on the GPU
when there is one) and evaluate it with the LVIS evaluator; draw its predictions beside the ground
truth of a few validation images (tools/visualize.py). Box and mask AP, AP50, APr, APc, APf,
AP-fixed and AP-pool are printed, and then next to the README's band (docs/demo_band.json: mean
and std over seeds of tools/benchmark_synthlt.py's "IIF raw" row), each marked inside or outside
the band's 95 % prediction interval for one more seed (mean ± t · std · sqrt(1 + 1/n) over n
seeds). On a terminal each phase shows a progress bar with its rate and ETA; otherwise (a
log file, CI) one plain line per update. An interrupted demo resumes where it stopped; the full
log is in OUTPUT_DIR/log.txt. When training has finished, only model_final.pth is kept of the
checkpoints. On CPU the run is held to 2 intra-op threads and AVX2 kernels (``--kernels``), so
on an x86 CPU with AVX2 it prints the README's demo numbers bit for bit (measured on AMD EPYC
hosts with and without AVX-512).

    python tools/demo.py [--output-dir output/demo] [--num-vis 4] [train_net.py config overrides]
    python tools/demo.py SOLVER.MAX_ITER 200      # a shorter run
"""

import argparse
import glob
import math
import os
import re
import subprocess
import sys
import time

from iif_d2.utils.machine import KERNEL_PINS
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    REPO, "configs", "SynthLT-InstanceSegmentation", "mask_rcnn_R_18_FPN_iif.yaml"
)
METRICS = ("AP", "AP50", "APr", "APc", "APf", "AP-fixed", "AP-pool")
# what detectron2 logs while it trains and evaluates (train_net.py's stdout)
ITER_LINE = re.compile(r"\biter: (\d+)\s+total_loss: ([-\d.e+na]+)")
START_LINE = re.compile(r"Starting training from iteration (\d+)")
INFERENCE_START = re.compile(r"Start inference on (\d+) (?:batches|images)")
INFERENCE_DONE = re.compile(r"Inference done (\d+)/(\d+)")
INFERENCE_END = re.compile(r"Total inference time")
# the demo's expected numbers: mean and std over seeds of the benchmark's "IIF raw" row
BAND_FILE = os.path.join(REPO, "docs", "demo_band.json")
BAND_CONFIDENCE = 0.95  # a run is inside the band within its prediction interval for one seed
# On CPU the demo holds its run to 2 intra-op threads and (iif_d2.utils.machine.resolve_kernel_pin)
# AVX2 kernels: the README's demo numbers then repeat bit for bit on an x86 CPU with AVX2
DEMO_THREADS = 2
PLAIN_INTERVAL_S = 30.0  # off a terminal: at most one progress line per this many seconds


class Progress:
    """One phase's progress: a tqdm bar (rate, ETA) on a terminal; elsewhere plain lines, at most
    one per ``PLAIN_INTERVAL_S`` seconds plus the last, and never a carriage return."""

    def __init__(self, desc, total, unit, initial=0, stream=None):
        self.desc, self.total, self.unit, self.initial = desc, total, unit, initial
        self.stream = stream or sys.stdout
        self.n, self.postfix, self.start, self.printed = initial, "", time.time(), -math.inf
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=f"[demo] {desc}", unit=unit,
                file=self.stream, dynamic_ncols=True,
            )  # fmt: skip

    def update(self, n, postfix=""):
        """Move to position ``n`` (absolute) with an optional note (e.g. the loss)."""
        n = min(max(n, self.n), self.total)
        self.n, self.postfix = n, postfix or self.postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n - self.bar.n)
        elif time.time() - self.printed >= PLAIN_INTERVAL_S or n == self.total:
            self._line()

    def _line(self):
        elapsed = time.time() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {_minutes((self.total - self.n) / rate)}" if rate > 0 else "ETA ?"
        note = f", {self.postfix}" if self.postfix else ""
        print(
            f"[demo] {self.desc} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%), "
            f"{rate:.2f} {self.unit}/s, {eta}{note}",
            file=self.stream,
            flush=True,
        )
        self.printed = time.time()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.printed < self.start or self.n < self.total:
            self._line()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _LogFollower:
    """Turns train_net.py's log lines into progress: training iterations and evaluations."""

    def __init__(self, max_iter, desc):
        self.max_iter, self.desc, self.bar = max_iter, desc, None

    def _switch(self, desc, total, unit, initial=0):
        if self.bar is not None:
            self.bar.close()
        self.bar = Progress(desc, total, unit, initial)

    def feed(self, line):
        if m := START_LINE.search(line):
            if self.max_iter:
                self._switch(f"{self.desc}: training", self.max_iter, "it", int(m.group(1)))
        elif (m := ITER_LINE.search(line)) and self.bar is not None:
            self.bar.update(int(m.group(1)) + 1, f"loss {m.group(2)}")
        elif m := INFERENCE_START.search(line):
            self._switch(f"{self.desc}: evaluation, inference", int(m.group(1)), "img")
        elif (m := INFERENCE_DONE.search(line)) and self.bar is not None:
            self.bar.update(int(m.group(1)))
        elif INFERENCE_END.search(line) and self.bar is not None:
            self.bar.update(self.bar.total)
            self.close()
            print(f"[demo] {self.desc}: evaluation, LVIS metrics ...", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_train_net(
    output_dir, opts, desc, *, eval_only=False, max_iter=None, config=CONFIG, progress=True
):
    """Run train_net.py on ``config`` with its output in OUTPUT_DIR/demo_stdout.log, showing
    its progress (training iterations with rate and ETA, then the evaluation's inference) unless
    ``progress`` is False (several runs at once).

    Returns:
        the evaluation results (OUTPUT_DIR/inference/results.json).
    """
    os.makedirs(output_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config]
    cmd += ["--eval-only"] if eval_only else ["--resume"]
    cmd += ["OUTPUT_DIR", output_dir, "MODEL.DEVICE", _device(), *opts]
    log_path = os.path.join(output_dir, "demo_stdout.log")
    follower = _LogFollower(None if eval_only else max_iter, desc)
    with open(log_path, "a") as log, open(log_path) as tail:
        tail.seek(0, os.SEEK_END)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        pending = ""
        while True:
            done = proc.poll() is not None
            pending += tail.read()
            *lines, pending = pending.split("\n")
            for line in lines if progress else ():
                follower.feed(line)
            if done:
                break
            time.sleep(1)
    follower.close()
    if proc.returncode:
        sys.exit(
            f"[demo] train_net.py failed (exit {proc.returncode}); see {log_path} and "
            f"{output_dir}/log.txt"
        )
    import json

    with open(os.path.join(output_dir, "inference", "results.json")) as f:
        return json.load(f)


def demo_config(opts, config=CONFIG):
    """The demo's config (or ``config``) with the user's overrides (to read MAX_ITER,
    checkpointing)."""
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg


def checkpoint_opts(cfg, user_opts):
    """Overrides that keep only the checkpoints the demo needs.

    detectron2 saves model_{iter}.pth every CHECKPOINT_PERIOD and model_final.pth at the end, so
    a period dividing MAX_ITER writes the last iteration twice: the period is moved off it. Where
    the config has a key for the number of periodic checkpoints kept (SOLVER.CHECKPOINTS_KEPT),
    one is kept, enough to resume. The evaluation also reports AP-fixed and AP-pool. Nothing the
    user set is overridden.
    """
    keys = set(user_opts[::2])
    opts = []
    period, max_iter = cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER
    if "SOLVER.CHECKPOINT_PERIOD" not in keys and max_iter % period == 0:
        period = next(p for p in range(period + 1, max_iter + 2) if max_iter % p)
        opts += ["SOLVER.CHECKPOINT_PERIOD", str(period)]
    if "CHECKPOINTS_KEPT" in cfg.SOLVER and "SOLVER.CHECKPOINTS_KEPT" not in keys:
        opts += ["SOLVER.CHECKPOINTS_KEPT", "1"]
    if "TEST.LVIS_EVAL_FIXED_POOLED" not in keys:  # AP-fixed and AP-pool beside AP
        opts += ["TEST.LVIS_EVAL_FIXED_POOLED", "True"]
    return opts


def pinned_run(kernels, user_opts, device):
    """How the demo's run is held to the README's numbers on ``device``.

    Returns:
        (environment to add, overrides to add, a description for the first line). On CPU:
        ``kernels``' pin (None: AVX2 where the CPU has it, else its own kernels) and
        NUM_THREADS 2 unless the user set NUM_THREADS; on a GPU nothing.

    Raises:
        ValueError: ``kernels`` named a pin this CPU cannot run.
    """
    from iif_d2.utils.machine import native_capability, resolve_kernel_pin

    if device != "cpu":
        return {}, [], ""
    opts, threads = [], None
    keys = list(user_opts[::2])
    if "NUM_THREADS" in keys:
        threads = user_opts[2 * keys.index("NUM_THREADS") + 1]
    else:
        opts, threads = ["NUM_THREADS", str(DEMO_THREADS)], DEMO_THREADS
    name, env = resolve_kernel_pin(kernels)
    label = f"{native_capability()} kernels (native)" if name == "native" else f"{name} kernels"
    return env, opts, f"{threads} thread(s), {label}"


def load_band(path):
    """The README's band for the demo (written by ``tools/benchmark_synthlt.py --only iif_raw``):
    per task and metric the mean and std over seeds; None if the file is missing."""
    import json

    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def band_half_width(std, n, confidence=BAND_CONFIDENCE):
    """Half-width of the prediction interval for one more seed, from ``n`` seeds with sample
    standard deviation ``std``: ``t(1 - (1 - confidence) / 2, n - 1) * std * sqrt(1 + 1/n)``.

    With 3 seeds it is 4.97 std, with 5 seeds 3.04: a fixed "2 std" would call a new seed
    outside about one time in four with 3 seeds (the spread itself is estimated), not one in 20.
    """
    from scipy import stats

    if n < 2:
        raise ValueError(f"a band needs at least 2 seeds for its spread, got {n}")
    return float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std * math.sqrt(1 + 1 / n)


def in_band(value, mean, std, n):
    """Whether ``value`` lies within the band's prediction interval (``n`` seeds)."""
    return abs(value - mean) <= band_half_width(std, n)


def print_band(results, band):
    """This run's numbers next to the band, and whether each falls inside its 95 % prediction
    interval for one more seed."""
    if band is None:
        print(f"[demo] no band file ({os.path.relpath(BAND_FILE, REPO)}): nothing to compare")
        return
    n = len(band["seeds"])
    k = band_half_width(1.0, n)
    print(
        f"[demo] README band: mean ± std over {n} seeds ({band['machine']}, "
        f"{band['threads']} thread(s)); inside = within the {BAND_CONFIDENCE:.0%} prediction "
        f"interval for one more seed, mean ± {k:.2f} std:"
    )
    from iif_d2.utils.machine import cpu_kernels

    here = cpu_kernels()
    if not band["machine"].startswith(here):
        print(
            f"[demo] this machine: {here}, another CPU or kernel set than the band's: the same "
            "seed trains another model here, so only the band's spread is comparable"
        )
    outside = 0
    for task, metrics in band["metrics"].items():
        for key, (mean, std) in metrics.items():
            value = results[task][key]
            ok = in_band(value, mean, std, n)
            outside += not ok
            print(
                f"[demo]   {task:<5}{key:<5}{value:6.1f}   band {mean:5.1f} ± {std:.1f}"
                f" [{mean - k * std:5.1f}, {mean + k * std:5.1f}]   "
                f"{'inside' if ok else 'OUTSIDE'}"
            )
    print(f"[demo] {'all inside the band' if not outside else f'{outside} outside the band'}")


def remove_periodic_checkpoints(output_dir) -> int:
    """After a finished run, delete model_XXXXXXX.pth (resume then starts from model_final).

    Returns:
        how many checkpoints were deleted (none unless last_checkpoint names model_final.pth).
    """
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            last = f.read().strip()
    except OSError:
        return 0
    if os.path.basename(last) != "model_final.pth":
        return 0
    removed = 0
    for path in glob.glob(os.path.join(output_dir, "model_[0-9]*.pth")):
        os.remove(path)
        removed += 1
    return removed


def _parser():
    doc = __doc__.split("\n\n")
    p = argparse.ArgumentParser(
        description="\n\n".join(doc[:2]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + doc[2],
    )
    p.add_argument(
        "--output-dir",
        default=os.path.join(REPO, "output", "demo"),
        help="where the runs, logs and pictures go (default: output/demo)",
    )
    p.add_argument(
        "--num-vis", type=int, default=4, help="validation images drawn at the end (default: 4)"
    )
    p.add_argument(
        "--kernels", default=None, choices=["native", *KERNEL_PINS],
        help="CPU kernel set (ATen, oneDNN, MKL) of the run: avx2 (default where the CPU has "
        "it: the README's numbers then repeat bit for bit with NUM_THREADS 2, the default), "
        "native (this CPU's widest: another draw from the band) or default (portable)",
    )  # fmt: skip
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="train_net.py config overrides: KEY VALUE ..."
    )
    return p


def main(argv=None):
    args = _parser().parse_args(argv)
    out = os.path.abspath(args.output_dir)
    if len(args.opts) % 2:
        sys.exit(f"[demo] config overrides come in KEY VALUE pairs; got {args.opts}")
    try:
        cfg = demo_config(args.opts)
    except (AssertionError, KeyError, ValueError) as e:  # yacs asserts that a key exists
        sys.exit(f"[demo] bad config override in {' '.join(args.opts)}: {e}")
    max_iter = cfg.SOLVER.MAX_ITER
    try:
        env, pin_opts, pin = pinned_run(args.kernels, args.opts, _device())
    except ValueError as e:
        sys.exit(f"[demo] --kernels: {e}")
    os.environ.update(env)  # before torch first runs a CPU kernel here; train_net.py inherits it
    opts = checkpoint_opts(cfg, args.opts) + pin_opts + list(args.opts)
    print(
        f"[demo] IIF Mask R-CNN on SynthLT, {max_iter} iterations on {_device()}"
        f"{f' ({pin})' if pin else ''}; output: {out}"
    )
    t0 = time.time()
    from detectron2.data import DatasetCatalog

    print("[demo] 1/3 dataset: SynthLT (generated on first use) ...", flush=True)
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        DatasetCatalog.get(name)
    print(f"[demo] 1/3 dataset ready ({time.time() - t0:.0f} s)", flush=True)
    trained = run_train_net(out, opts, "2/3 IIF", max_iter=max_iter)
    removed = remove_periodic_checkpoints(out)
    if removed:
        print(f"[demo] removed {removed} periodic checkpoint(s); kept {out}/model_final.pth")
    print(f"[demo] done in {(time.time() - t0) / 60:.1f} min. SynthLT val, LVIS evaluation:")
    print(f"{'task':<6}" + "".join(f"{k:>9}" for k in METRICS))
    for task in ("bbox", "segm"):
        row = "".join(f"{trained[task].get(k, float('nan')):9.1f}" for k in METRICS)
        print(f"{task:<6}{row}")
    print_band(trained, load_band(BAND_FILE))
    if args.num_vis > 0:
        from visualize import load_run_config, visualize

        print("[demo] 3/3 drawing predictions ...", flush=True)
        vis_cfg = load_run_config(os.path.join(out, "model_final.pth"), device=_device())
        dataset = cfg.DATASETS.TEST[0]
        written = visualize(vis_cfg, os.path.join(out, "vis"), dataset=dataset, num=args.num_vis)
        print(
            f"[demo] {len(written)} pictures (prediction | ground truth, score >= 0.5) of "
            f"{dataset} in {os.path.join(out, 'vis')}/"
        )


if __name__ == "__main__":
    main()
