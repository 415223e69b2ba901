#!/usr/bin/env python
"""`make demo`: train a small Mask R-CNN with IIF on SynthLT, print its LVIS metrics and save
a few pictures of its predictions.

Three phases: generate the synthetic long-tailed dataset (first use only); train
configs/SynthLT-InstanceSegmentation/mask_rcnn_R_18_FPN_iif.yaml through train_net.py (on the GPU
when there is one) and evaluate it with the LVIS evaluator; draw its predictions beside the ground
truth of a few validation images (tools/visualize.py). Box and mask AP, AP50, APr, APc, APf,
AP-fixed and AP-pool are printed, and then next to the README's band (docs/results/demo_band.json:
mean and std over seeds of dev/benchmark_synthlt.py's "IIF raw" row), each marked inside or outside
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
import sys
import time

from iif_d2.bench.runner import LogFollower, run_train_net, train_config
from iif_d2.utils.cli_checks import (
    OneLineParser,
    UsageError,
    check_not_blank,
    check_output_folder,
    non_negative_int,
    one_line,
)
from iif_d2.utils.machine import KERNEL_PINS
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    REPO, "configs", "SynthLT-InstanceSegmentation", "mask_rcnn_R_18_FPN_iif.yaml"
)
METRICS = ("AP", "AP50", "APr", "APc", "APf", "AP-fixed", "AP-pool")
# the demo's expected numbers: mean and std over seeds of the benchmark's "IIF raw" row
BAND_FILE = os.path.join(REPO, "docs", "results", "demo_band.json")
BAND_CONFIDENCE = 0.95  # a run is inside the band within its prediction interval for one seed
# On CPU the demo holds its run to 2 intra-op threads and (iif_d2.utils.machine.resolve_kernel_pin)
# AVX2 kernels: the README's demo numbers then repeat bit for bit on an x86 CPU with AVX2
DEMO_THREADS = 2


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _LogFollower(max_iter, desc):
    """train_net.py's log lines as the demo's progress (``bench.runner.LogFollower``)."""
    return LogFollower(max_iter, desc, prefix="[demo]")


def demo_config(opts, config=CONFIG):
    """The demo's config (or ``config``) with the user's overrides (to read MAX_ITER,
    checkpointing)."""
    return train_config(config, opts)


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
    """The README's band for the demo (written by ``dev/benchmark_synthlt.py --only iif_raw``):
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
    p = OneLineParser(
        prog="demo.py",
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
        "--num-vis",
        type=non_negative_int,
        default=4,
        help="validation images drawn at the end (default: 4; 0: none)",
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


def _usage_error(message: str):
    """One line on stderr, exit status 2 (as every iif-d2 command's usage errors)."""
    print(f"demo.py: error: {one_line(message)}", file=sys.stderr)
    sys.exit(2)


def main(argv=None):
    args = _parser().parse_args(argv)
    try:  # "" would be the current folder: its files overwritten
        check_not_blank(args.output_dir, "--output-dir", "a folder, e.g. output/demo")
    except UsageError as e:
        _usage_error(str(e))
    out = os.path.abspath(args.output_dir)
    if len(args.opts) % 2:
        _usage_error(f"config overrides come in KEY VALUE pairs; {args.opts[-1]!r} has no value")
    if "OUTPUT_DIR" in args.opts[::2]:
        _usage_error("OUTPUT_DIR is set by --output-dir; drop it from the config overrides")
    try:
        check_output_folder(out, "--output-dir", create=True)
        cfg = demo_config(args.opts)
    except UsageError as e:
        _usage_error(str(e))
    except (AssertionError, KeyError, ValueError) as e:  # yacs asserts that a key exists
        _usage_error(f"bad config override in {' '.join(args.opts)}: {one_line(e)}")
    from iif_d2.engine.config_files import RunConfigError, check_run_config

    try:  # what train_net.py would refuse, before the dataset is generated
        checked = cfg.clone()
        checked.defrost()
        checked.OUTPUT_DIR = out
        check_run_config(checked)
    except RunConfigError as e:
        _usage_error(str(e))
    max_iter = cfg.SOLVER.MAX_ITER
    try:
        env, pin_opts, pin = pinned_run(args.kernels, args.opts, _device())
    except ValueError as e:
        _usage_error(f"--kernels: {e}")
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
    trained = run_train_net(out, CONFIG, opts, "2/3 IIF", max_iter=max_iter, prefix="[demo]")
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
        from iif_d2.engine.visualize import load_run_config, visualize

        print("[demo] 3/3 drawing predictions ...", flush=True)
        dataset = cfg.DATASETS.TEST[0]
        try:
            vis_cfg = load_run_config(os.path.join(out, "model_final.pth"), device=_device())
            written = visualize(
                vis_cfg, os.path.join(out, "vis"), dataset=dataset, num=args.num_vis
            )
        except (OSError, ValueError) as e:  # e.g. the vis folder cannot be written
            print(f"demo.py: error: drawing the predictions: {one_line(e)}", file=sys.stderr)
            sys.exit(2)
        print(
            f"[demo] {len(written)} pictures (prediction | ground truth, score >= 0.5) of "
            f"{dataset} in {os.path.join(out, 'vis')}/"
        )


if __name__ == "__main__":
    main()
