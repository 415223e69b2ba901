"""Metrics as printed everywhere in iif-d2: percent, in the table detectron2 prints
(``detectron2.utils.logger.create_small_table``: a tabulate "pipe" table, three decimals),
without importing detectron2."""

import math

from tabulate import tabulate

__all__ = ["in_percent", "metrics_tables", "rows_table", "small_table"]


def in_percent(metrics: dict) -> dict:
    """lvis-api's fractions as percent; its -1 ("undefined": no ground truth in that group or
    area range) as NaN, as detectron2's COCO evaluator reports it."""
    return {
        k: (float("nan") if v is None or v < 0 or math.isnan(v) else 100.0 * float(v))
        for k, v in metrics.items()
    }


def small_table(values: dict) -> str:
    """One row of metrics as detectron2's ``create_small_table`` formats them."""
    keys, row = tuple(zip(*values.items()))
    return tabulate(
        [row],
        headers=keys,
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )


def metrics_tables(values: dict, per_table: int = 9) -> str:
    """``values`` as consecutive small tables of at most ``per_table`` columns (each fits a
    100-column terminal): the AP metrics, then the AR ones (or AP-fixed/AP-pool)."""
    items = list(values.items())
    ap = [kv for kv in items if not kv[0].startswith(("AR", "AP-"))]
    rest = [kv for kv in items if kv not in ap]
    groups = [ap[i : i + per_table] for i in range(0, len(ap), per_table)]
    groups += [rest[i : i + per_table] for i in range(0, len(rest), per_table)]
    return "\n".join(small_table(dict(g)) for g in groups if g)


def rows_table(headers, rows) -> str:
    """Several rows in the same format as :func:`small_table` (missing values as "-")."""
    return tabulate(
        rows,
        headers=headers,
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
        missingval="-",
    )
