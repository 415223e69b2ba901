"""Train and evaluate rows of the Fashion-MNIST-LT benchmark; records appended per row.

A row is (model, method, strategy, variant, tau, seed, epochs). Rows that share a softmax
stage-1 model (softmax, post-process IIF, decoupled IIF, post-hoc logit adjustment) are
computed from one training per seed in :func:`run_rows`; the training is deterministic at a
fixed thread count, so this equals training each row on its own.
"""

import json
import logging
import os
import platform
import time
from typing import Dict, Iterable, List, Optional

import torch

from ..utils.io import write_json_atomic
from ..utils.machine import cpu_model
from ..weights import VARIANTS
from .adjust import LogitAdjustment
from .fashion_mnist import load_fashion_mnist
from .train import SmallCNN, evaluate, features, retrain_classifier, train

__all__ = [
    "BENCHMARK_ROWS",
    "SHARED_STAGE1",
    "load_records",
    "row_key",
    "run_rows",
]

logger = logging.getLogger(__name__)

# (method, strategy, variant): strategy and variant are None where they do not apply
BENCHMARK_ROWS = (
    [("softmax", None, None)]
    + [("iif", "post_process", v) for v in VARIANTS]
    + [("iif", "decoupled", v) for v in VARIANTS]
    + [("iif", "end_to_end", "smooth")]
    + [("balanced_softmax", None, None), ("logit_adjustment", None, None)]
    + [("logit_adjustment_posthoc", None, None)]
)
SHARED_STAGE1 = {"softmax", "logit_adjustment_posthoc"}  # plus IIF post_process / decoupled


def _needs_stage1(method: str, strategy: Optional[str]) -> bool:
    return method in SHARED_STAGE1 or strategy in ("post_process", "decoupled")


def row_key(rec: dict) -> tuple:
    """What identifies a row's result: model, method, strategy, variant, tau, seed, epochs."""
    return tuple(
        rec.get(k) for k in ("model", "method", "strategy", "variant", "tau", "seed", "epochs")
    )


def load_records(path: str) -> List[dict]:
    """The records file's list (empty if the file does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def _append(path: Optional[str], rec: dict) -> None:
    if not path:
        return
    records = [r for r in load_records(path) if row_key(r) != row_key(rec)]
    write_json_atomic(path, records + [rec])


def _test_logits(model, x) -> torch.Tensor:
    return model.fc(features(model.features, x))


def run_rows(
    rows: Iterable[tuple],
    seed: int,
    epochs: int,
    *,
    width: int = 8,
    tau: float = 1.0,
    data: Optional[dict] = None,
    records_path: Optional[str] = None,
    skip_recorded: bool = True,
    command: str = "",
    stage2_epochs: int = 20,
) -> List[dict]:
    """Train and evaluate ``rows`` (tuples of :data:`BENCHMARK_ROWS`) for one seed.

    Args:
        rows: (method, strategy, variant) tuples.
        seed, epochs: the seed (initialisation, data order, flips) and stage-1 epochs.
        width: the SmallCNN's first-block channels.
        tau: logit-adjustment τ.
        data: :func:`load_fashion_mnist`'s dict (loaded when None).
        records_path: append each row's record to this JSON list as soon as it is done.
        skip_recorded: leave out rows already in ``records_path``.
        command: the command line, stored with each record.
        stage2_epochs: decoupled stage-2 epochs.

    Returns:
        the new records.
    """
    data = data or load_fashion_mnist()
    counts = data["counts"]
    model_name = f"smallcnn{width}"
    done = (
        {row_key(r) for r in load_records(records_path)}
        if (records_path and skip_recorded)
        else set()
    )
    base = {
        "model": model_name,
        "tau": tau,
        "seed": seed,
        "epochs": epochs,
        "stage2_epochs": stage2_epochs,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "train_images": len(data["train_y"]),
        "counts": list(counts),
        "command": command,
    }
    todo = []
    for method, strategy, variant in rows:
        rec = dict(base, method=method, strategy=strategy, variant=variant)
        if row_key(rec) not in done:
            todo.append(rec)
    out: List[dict] = []
    x, y = data["train_x"], data["train_y"]

    def finish(rec, logits, adj, seconds, cpu0):
        rec.update(evaluate(logits, data["test_y"], adj, counts), seconds=round(seconds, 2))
        rec["cpu_seconds"] = round(time.process_time() - cpu0, 2)
        logger.info(
            "%s %s %s seed %d: top-1 %.2f (many %.1f, medium %.1f, few %.1f), %.1f s",
            rec["method"], rec["strategy"] or "", rec["variant"] or "", seed, rec["top1"],
            rec["many"], rec["medium"], rec["few"], seconds,
        )  # fmt: skip
        _append(records_path, rec)
        out.append(rec)

    def adjustment(rec, stage=2):
        return LogitAdjustment(
            rec["method"], counts, strategy=rec["strategy"] or "end_to_end",
            variant=rec["variant"] or "smooth", tau=tau, stage=stage,
        )  # fmt: skip

    shared = [r for r in todo if _needs_stage1(r["method"], r["strategy"])]
    if shared:
        torch.manual_seed(seed)
        t0, c0 = time.perf_counter(), time.process_time()
        model = train(
            SmallCNN(len(counts), width), x, y, LogitAdjustment("softmax", counts),
            epochs=epochs, seed=seed,
        )  # fmt: skip
        t_stage1, c_stage1 = time.perf_counter() - t0, time.process_time() - c0
        logits = _test_logits(model, data["test_x"])
        t_eval = time.perf_counter() - t0 - t_stage1
        c_eval = time.process_time() - c0  # stage 1 and its test logits
        train_feats = features(model.features, x)
        stage1_fc = {k: v.clone() for k, v in model.fc.state_dict().items()}
        for rec in shared:
            rec["train_seconds"] = round(t_stage1, 2)
            rec["train_cpu_seconds"] = round(c_stage1, 2)
            if rec["strategy"] != "decoupled":
                finish(
                    rec, logits, adjustment(rec), t_stage1 + t_eval, time.process_time() - c_eval
                )
                continue
            t1, c1 = time.perf_counter(), time.process_time()
            model.fc.load_state_dict(stage1_fc)
            adj = adjustment(rec)
            retrain_classifier(
                model, model.fc, train_feats, y, adj, epochs=stage2_epochs, seed=seed,
                batch_size=256,
            )  # fmt: skip
            rec["stage2_seconds"] = round(time.perf_counter() - t1, 2)
            rec["stage2_cpu_seconds"] = round(time.process_time() - c1, 2)
            finish(rec, model.fc(features(model.features, data["test_x"])), adj,
                   t_stage1 + time.perf_counter() - t1, c1 - c_stage1)  # fmt: skip
    for rec in todo:
        if _needs_stage1(rec["method"], rec["strategy"]):
            continue
        torch.manual_seed(seed)
        adj = adjustment(rec)
        t0, c0 = time.perf_counter(), time.process_time()
        model = train(SmallCNN(len(counts), width), x, y, adj, epochs=epochs, seed=seed)
        rec["train_seconds"] = round(time.perf_counter() - t0, 2)
        rec["train_cpu_seconds"] = round(time.process_time() - c0, 2)
        finish(rec, _test_logits(model, data["test_x"]), adj, time.perf_counter() - t0, c0)
    return out


def summarize(records: Iterable[dict]) -> Dict[tuple, List[dict]]:
    """Records grouped by row (the key without the seed), seeds sorted."""
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        k = row_key(r)
        groups.setdefault(k[:5] + k[6:], []).append(r)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in groups.items()}
