"""The Fashion-MNIST-LT benchmark page, generated from its records only.

Each of the paper's claims is a paired difference over seeds (same seed = same data order and
initialisation) with a two-sided 95 % Student-t interval: **shown** when the interval lies
above 0, **contradicted** when it lies below 0, **not shown** otherwise.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

from ..weights import VARIANTS
from .runner import summarize
from .train import SHOT_SPLIT

__all__ = ["CLAIMS", "paired_interval", "render_page", "verdict"]

# two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1..30
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

SOFTMAX = ("softmax", None, None)
PP = ("iif", "post_process", "smooth")
DEC = ("iif", "decoupled", "smooth")
E2E = ("iif", "end_to_end", "smooth")
BS = ("balanced_softmax", None, None)
LA = ("logit_adjustment", None, None)
LA_POST = ("logit_adjustment_posthoc", None, None)

# (claim, paper source, row A, row B): the claim is A > B
CLAIMS = (
    ("post-process IIF beats softmax", "Tables V, VI", PP, SOFTMAX),
    ("decoupled IIF beats softmax", "Tables V, VII", DEC, SOFTMAX),
    ("decoupled IIF beats post-process IIF", "Table V", DEC, PP),
    ("decoupled IIF beats end-to-end IIF", "Table V", DEC, E2E),
    ("decoupled IIF beats balanced softmax", "§V.D, Tables VIII–X", DEC, BS),
    ("decoupled IIF beats logit adjustment (loss)", "§V.D, Tables VIII–X", DEC, LA),
    ("decoupled IIF beats post-hoc logit adjustment", "§V.D, Tables VIII–X", DEC, LA_POST),
    ("post-process IIF beats post-hoc logit adjustment", "Fig. 1, §V.D", PP, LA_POST),
)


def paired_interval(diffs: Sequence[float]) -> Tuple[float, float, float]:
    """Mean of ``diffs`` and its 95 % Student-t interval (nan-wide for fewer than 2)."""
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def verdict(lo: float, hi: float) -> str:
    """shown (interval above 0), contradicted (below 0), not shown (otherwise or undefined)."""
    if lo > 0:
        return "shown"
    if hi < 0:
        return "contradicted"
    return "not shown"


def _mean_sd(values: Sequence[float]) -> str:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}"


def _label(row: tuple) -> str:
    method, strategy, variant = row
    if method == "iif":
        return f"IIF {strategy.replace('_', '-')} ({variant})"
    return {
        "softmax": "softmax",
        "balanced_softmax": "balanced softmax (loss)",
        "logit_adjustment": "logit adjustment (loss, τ = 1)",
        "logit_adjustment_posthoc": "logit adjustment (post-hoc, τ = 1)",
    }[method]


def _paired(groups: Dict[tuple, list], a: tuple, b: tuple) -> Optional[List[float]]:
    ra = {r["seed"]: r["top1"] for r in groups.get(a, [])}
    rb = {r["seed"]: r["top1"] for r in groups.get(b, [])}
    seeds = sorted(set(ra) & set(rb))
    return [ra[s] - rb[s] for s in seeds] if seeds else None


def _claim_line(name, source, diffs) -> str:
    if not diffs:
        return f"| {name} | {source} | – | – | – | no records |"
    mean, lo, hi = paired_interval(diffs)
    return (
        f"| {name} | {source} | {len(diffs)} | {mean:+.2f} | [{lo:+.2f}, {hi:+.2f}] | "
        f"**{verdict(lo, hi)}** |"
    )


def render_page(records: List[dict]) -> str:
    """The Markdown page for the records of one (model, epochs) setting: the rows × seeds
    table, the paper's claims as paired differences and the variant comparison."""
    if not records:
        raise ValueError("No classification records; run dev/classify_fashion_mnist.py first.")
    full = summarize(records)
    settings = sorted({(k[0], k[4], k[5]) for k in full})  # model, tau, epochs
    model, tau, epochs = settings[-1]
    groups = {k[1:4]: v for k, v in full.items() if (k[0], k[4], k[5]) == (model, tau, epochs)}
    recs = [r for v in groups.values() for r in v]
    seeds = sorted({r["seed"] for r in recs})
    cpus = sorted({r["cpu"] for r in recs})
    threads = sorted({r["threads"] for r in recs})
    counts = recs[0]["counts"]
    own = ("balanced_softmax", "logit_adjustment")
    full_runs = [
        r for r in recs if r["method"] in own + ("softmax",) or r["strategy"] == "end_to_end"
    ]
    stage2 = [r for r in recs if r.get("stage2_seconds") is not None]
    commands = ", ".join(f"`{c}`" for c in sorted({r.get("command") or "?" for r in recs}))
    hi, lo = SHOT_SPLIT
    lines = [
        "# IIF on Fashion-MNIST-LT (long-tailed classification, real images)",
        "",
        "<!-- generated by `python dev/classify_fashion_mnist.py --from-records`; do not edit -->",
        "",
        f"Generated from `docs/results/classification_runs.json` ({len(recs)} records). "
        f"Hardware: {', '.join(cpus)}, {'/'.join(map(str, threads))} "
        f"thread{'s' if threads != [1] else ''} (`torch.set_num_threads`), on a shared 2-core "
        f"machine. Seeds: {', '.join(map(str, seeds))} ({len(seeds)}). Commands (rows already "
        f"recorded are skipped, so the benchmark runs in parts): {commands}; then "
        "`python dev/classify_fashion_mnist.py --from-records`.",
        "",
        f"Data: Fashion-MNIST-LT (docs/method.md §5.1), {sum(counts):,} training images "
        f"({', '.join(map(str, counts))} per class, imbalance 100, the first images of each class "
        "in file order), the balanced 10,000-image test set. Model: "
        f"{model} (docs/method.md §5.2), {epochs} epochs of softmax (or of the row's loss), "
        f"batch 128, SGD + cosine; decoupled stage 2: {recs[0].get('stage2_epochs', 20)} epochs "
        "retraining only the classifier. Many / medium / few: classes with "
        f"> {hi} / {lo}–{hi} / < {lo} training images ({_shot_sizes(counts)} classes), "
        "mean per-class accuracy on the test set.",
        "",
        "Time per run, CPU seconds of the process (wall seconds on the shared machine): a "
        f"full training {_times(full_runs, 'train')}; decoupled stage 2 "
        f"{_times(stage2, 'stage2')}; " + "post-process rows need no training beyond softmax.",
        "",
        "| row | seeds | top-1 (%) | many | medium | few |",
        "|---|---|---|---|---|---|",
    ]
    from .runner import BENCHMARK_ROWS

    for row in BENCHMARK_ROWS:
        rs = groups.get(row)
        if not rs:
            continue
        cells = [_mean_sd([r[k] for r in rs]) for k in ("top1", "many", "medium", "few")]
        lines.append(f"| {_label(row)} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## The paper's claims (top-1, A − B paired by seed, 95 % t-interval)",
        "",
        "| claim (A beats B) | paper | seeds | mean diff | 95 % interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += [_claim_line(n, s, _paired(groups, a, b)) for n, s, a, b in CLAIMS]
    lines += ["", "## Which variant is best (paper, CIFAR-10-LT: smooth, Tables VI–VII)", ""]
    for strategy in ("post_process", "decoupled"):
        lines += _variant_lines(groups, strategy)
    lines.append("")
    return "\n".join(lines)


def _times(recs, kind: str) -> str:
    if not recs:
        return "–"
    cpu = [r[f"{kind}_cpu_seconds"] for r in recs if f"{kind}_cpu_seconds" in r]
    wall = _mean_sd([r[f"{kind}_seconds"] for r in recs])
    return f"{_mean_sd(cpu)} s ({wall} s)" if cpu else f"– ({wall} s)"


def _shot_sizes(counts) -> str:
    hi, lo = SHOT_SPLIT
    many = sum(c > hi for c in counts)
    few = sum(c < lo for c in counts)
    return f"{many} / {len(counts) - many - few} / {few}"


def _variant_lines(groups, strategy) -> List[str]:
    means = {}
    for v in VARIANTS:
        rs = groups.get(("iif", strategy, v))
        if rs:
            means[v] = sum(r["top1"] for r in rs) / len(rs)
    if not means:
        return []
    best = max(means, key=means.get)
    name = strategy.replace("_", "-")
    lines = [
        f"**{name}**: best by mean top-1 **{best}** ({means[best]:.2f} %). "
        "Smooth minus each other variant:",
        "",
        "| smooth − | seeds | mean diff | 95 % interval | verdict |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for v in VARIANTS:
        if v == "smooth" or v not in means:
            continue
        diffs = _paired(groups, ("iif", strategy, "smooth"), ("iif", strategy, v))
        if not diffs:
            continue
        mean, lo, hi = paired_interval(diffs)
        verdicts.append(verdict(lo, hi))
        lines.append(
            f"| {v} | {len(diffs)} | {mean:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {verdicts[-1]} |"
        )
    if "contradicted" in verdicts:
        overall = "contradicted (a variant beats smooth)"
    elif verdicts and all(v == "shown" for v in verdicts):
        overall = "shown (smooth beats every variant)"
    else:
        overall = "not shown (smooth is not significantly better than every variant)"
    lines += ["", f'Claim "smooth is the best {name} variant": **{overall}**.', ""]
    return lines
