"""Every markdown table and results page of the benchmarks, in one place (tables through
``tabulate``): the SynthLT table and its claims, the README's compact results table, the speed
table, a comparison with another report, and the writer of generated pages."""

import json
import os
from typing import Dict, Sequence

from tabulate import tabulate

__all__ = [
    "README_BEGIN",
    "README_END",
    "claims_markdown",
    "comparison_text",
    "markdown_table",
    "readme_results_table",
    "replace_between_markers",
    "speed_markdown",
    "synthlt_markdown",
    "synthlt_figure",
    "write_speed_report",
    "write_synthlt_report",
]

README_BEGIN = "<!-- results:begin -->"
README_END = "<!-- results:end -->"
DASH = "–"  # a cell with no value (a box-only row's mask AP)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table of string cells (formatted by the caller: no number parsing)."""
    cells = [[str(c) for c in row] for row in rows]
    return tabulate(cells, headers=list(headers), tablefmt="github", disable_numparse=True)


def _mean_std(r, c, digits=None):
    digits = digits if digits is not None else (2 if c in ("FP/img", "train s/it") else 1)
    if r[c] is None:
        return DASH
    return f"{r[c]:.{digits}f} ± {r[c + ' std']:.{digits}f}"


def synthlt_markdown(rows, columns) -> str:
    """The SynthLT table: one line per row, mean ± std over seeds of each of ``columns``."""
    return markdown_table(
        ["method", *columns], [[r["method"], *(_mean_std(r, c) for c in columns)] for r in rows]
    )


def claims_markdown(claims) -> str:
    """The claims: paired difference a − b over seeds, its 95 % interval and the verdict."""
    body = [
        [
            c["claim"],
            c["metric"],
            f"{c['mean']:+.2f}",
            DASH if c["low"] is None else f"[{c['low']:+.2f}, {c['high']:+.2f}]",
            c["verdict"],
        ]
        for c in claims
    ]
    heads = ["claim", "metric", "a − b (mean over seeds)", "95 % CI", "verdict"]
    return markdown_table(heads, body)


README_COLUMNS = ("AP", "APr", "APc", "APf", "APbox", "FP/img")


def readme_results_table(rows, link: str) -> str:
    """The README's compact results table (mean ± std over seeds) and a line linking the page
    with every column and the claims."""
    seeds = rows[0]["seeds"] if rows else []
    table = markdown_table(
        ["SynthLT row", *README_COLUMNS],
        [[r["method"].strip(), *(_mean_std(r, c) for c in README_COLUMNS)] for r in rows],
    )
    return (
        f"{table}\n\nMask AP (APr/APc/APf: rare/common/frequent), box AP and false positives per "
        f"image at score ≥ 0.3, mean ± std over {len(seeds)} seeds; every column, the paper's "
        f"claims with their 95 % intervals and the one-stage detectors: [{link}]({link})."
    )


def replace_between_markers(text: str, block: str, path: str = "README.md") -> str:
    """``text`` with what lies between the lines ``README_BEGIN`` and ``README_END`` replaced
    by ``block``.

    Raises:
        ValueError: a marker is missing, or they are out of order.
    """
    lines = text.split("\n")
    try:
        begin = lines.index(README_BEGIN)
        end = lines.index(README_END, begin + 1)
    except ValueError:
        raise ValueError(
            f"{path} has no '{README_BEGIN}' line followed by a '{README_END}' line: add both "
            "around the results table, then run make docs again"
        ) from None
    return "\n".join(lines[: begin + 1] + [block] + lines[end:])


def comparison_text(cells, verdicts, reference_path, identical=None) -> str:
    """A comparison with another report as markdown: a summary line, the cells that are not
    consistent, the changed verdicts; with ``identical`` (from
    :func:`iif_d2.bench.synthlt_table.identical_runs`), how many runs repeat the reference's bit
    for bit."""
    bad = [c for c in cells if not c["consistent"]]
    lines = [
        f"Against {reference_path}: {len(cells) - len(bad)} of {len(cells)} cells consistent "
        "(the 95 % Welch interval of the difference of the means holds 0).",
        "",
    ]
    if identical is not None:
        same, other = identical
        lines += [
            f"{len(same)} of {len(same) + len(other)} runs in both repeat the reference's "
            "metrics bit for bit (all but the timings)"
            + (f"; differ: {', '.join(f'{k} seed {s}' for k, s in other)}" if other else "")
            + ".",
            "",
        ]
    if bad:
        body = [
            [c["method"], c["metric"], f"{c['mean']:.2f}", f"{c['reference']:.2f}",
             f"{c['difference']:+.2f}", f"[{c['low']:+.2f}, {c['high']:+.2f}]"]
            for c in bad
        ]  # fmt: skip
        heads = ["method", "metric", "this run", "reference", "difference", "95 % CI"]
        lines += [markdown_table(heads, body), ""]
    lines += [f"Verdict changed: {claim}: {ref} -> {now}" for claim, ref, now in verdicts]
    lines += [] if verdicts else ["Every claim's verdict is the reference's."]
    return "\n".join(lines) + "\n"


def write_synthlt_report(rows, claims, runs, out_root, header, columns) -> str:
    """OUTPUT/benchmark.md (header, table, claims), benchmark.json (header, rows, claims and
    every run) and benchmark.png; the markdown text."""
    text = header + "\n\n" + synthlt_markdown(rows, columns) + "\n"
    if claims:
        text += "\n" + claims_markdown(claims) + "\n"
    os.makedirs(out_root, exist_ok=True)  # a table read back from records trains nothing here
    with open(os.path.join(out_root, "benchmark.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_root, "benchmark.json"), "w") as f:
        json.dump({"header": header, "rows": rows, "claims": claims, "runs": runs}, f, indent=1)
    synthlt_figure(rows, os.path.join(out_root, "benchmark.png"))
    return text


def synthlt_figure(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r["method"].strip() for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 4.8))
    for i, k in enumerate(["APr", "APc", "APf", "AP"]):
        mean = [r[k] or 0.0 for r in rows]
        err = [r[k + " std"] or 0.0 for r in rows]
        ax1.bar(x + (i - 1.5) * 0.2, mean, 0.2, yerr=err, capsize=2, label=k)
    ax1.set_xticks(x, names, rotation=30, ha="right")
    ax1.set_ylabel("mask AP, mean ± std over seeds (0 = box-only)")
    ax1.legend()
    ax2.bar(x, [r["FP/img"] for r in rows], yerr=[r["FP/img std"] for r in rows], capsize=3,
            color="tab:red")  # fmt: skip
    ax2.set_xticks(x, names, rotation=30, ha="right")
    ax2.set_ylabel("false positives / image, mean ± std")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # the same bytes on every run
    plt.close(fig)


def _interval(s):
    return f"{s['interval'][0]:.3f}-{s['interval'][1]:.3f}"


def speed_markdown(rows: Sequence[Dict[str, object]]) -> str:
    """A markdown table of :func:`iif_d2.bench.timing.compare_pairs` rows."""
    body = []
    for r in rows:
        ratio, control = r["ratio"], r["control"]
        name = r["name"] if r["headline"] else f"{r['name']} (information)"
        body.append(
            [name, " / ".join(r["labels"]), f"{r['ms'][0]:.2f}", f"{r['ms'][1]:.2f}",
             f"{ratio['median']:.3f}", _interval(ratio),
             f"{ratio['spread'][0]:.3f}-{ratio['spread'][1]:.3f}", f"{control['median']:.3f}",
             _interval(control), r["verdict"]]
        )  # fmt: skip
    heads = ["what", "A / B", "A ms", "B ms", "B / A", "95 % interval", "spread 2.5-97.5 %",
             "control A / A", "control interval", "verdict"]  # fmt: skip
    return markdown_table(heads, body)


def write_speed_report(stem: str, title: str, meta: Dict[str, object], rows) -> tuple:
    """Write ``stem``.md (a header from ``meta``, the table) and ``stem``.json (meta + rows).

    Returns:
        The two paths.
    """
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    header = [f"# {title}", ""] + [f"- {k}: {v}" for k, v in meta.items()]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(header + ["", speed_markdown(rows), ""]))
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "rows": list(rows)}, f, indent=1)
    return stem + ".md", stem + ".json"
