"""IIF for long-tailed classification on Fashion-MNIST-LT: train and evaluate one row, run the
benchmark over rows × seeds, or write docs/benchmarks/classification.md from the records.

    python dev/classify_fashion_mnist.py --method iif --strategy decoupled --variant smooth
    python dev/classify_fashion_mnist.py --benchmark --seeds 0 1 2 3 4 --epochs 6
    python dev/classify_fashion_mnist.py --from-records

Every row's record is appended to docs/results/classification_runs.json as soon as it is
done; a benchmark re-run skips the rows already there, so it can be split and resumed.
See docs/method.md §5.
"""

import argparse
import logging
import os
import shlex
import sys

import torch

from iif_d2.classification.adjust import METHODS, STRATEGIES
from iif_d2.classification.fashion_mnist import FashionMNISTNotFound, load_fashion_mnist
from iif_d2.classification.report import render_page
from iif_d2.classification.runner import BENCHMARK_ROWS, load_records, run_rows
from iif_d2.utils.io import atomic_write
from iif_d2.weights import VARIANTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = os.path.join(ROOT, "docs", "results", "classification_runs.json")
PAGE = os.path.join(ROOT, "docs", "benchmarks", "classification.md")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--method", default="iif", choices=METHODS)
    p.add_argument("--strategy", default="decoupled", choices=STRATEGIES, help="for --method iif")
    p.add_argument("--variant", default="smooth", choices=VARIANTS, help="for --method iif")
    p.add_argument("--tau", type=float, default=1.0, help="logit-adjustment temperature")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6, help="stage-1 / end-to-end epochs")
    p.add_argument("--width", type=int, default=8, help="SmallCNN's first-block channels")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--data-root", help="folder holding the Fashion-MNIST IDX files")
    p.add_argument("--download", action="store_true", help="let torchvision download them")
    p.add_argument("--records", default=RECORDS, help="JSON records file ('' = none)")
    p.add_argument("--page", default=PAGE, help="page written by --from-records")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--benchmark", action="store_true", help="every row × --seeds")
    mode.add_argument("--from-records", action="store_true", help="write --page from --records")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.from_records:
        page = render_page(load_records(args.records))
        atomic_write(args.page, lambda f: f.write(page.encode()))
        print(f"wrote {args.page}")
        return 0
    torch.set_num_threads(args.threads)
    try:
        data = load_fashion_mnist(args.data_root, args.download)
    except FashionMNISTNotFound as e:
        sys.exit(f"error: {e}")
    logging.info("Fashion-MNIST from %s; LT counts %s", data["source"], data["counts"])
    command = "python dev/classify_fashion_mnist.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    if args.benchmark:
        rows, seeds = BENCHMARK_ROWS, args.seeds
    else:
        strategy = args.strategy if args.method == "iif" else None
        variant = args.variant if args.method == "iif" else None
        rows, seeds = [(args.method, strategy, variant)], [args.seed]
    for seed in seeds:
        run_rows(
            rows, seed, args.epochs, width=args.width, tau=args.tau, data=data,
            records_path=args.records or None, skip_recorded=args.benchmark, command=command,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
