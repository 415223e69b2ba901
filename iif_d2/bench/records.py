"""Benchmark records: the runs a benchmark made, kept in a JSON file so that a table can be
read back (and its pages regenerated) without training again.

A records file holds ``{"runs": [{"key", "seed", "stamp", "metrics", "machine", "kernels",
"torch"}, ...]}``. A run's *stamp* says what makes two runs the same run: its config, the values
its ``_BASE_`` chain sets (``config_digest``) and its overrides; a record whose stamp differs
from the one a run would have now (an edited config value) is another run and is not read
back.
"""

import fcntl
import hashlib
import json
import os
import re
import sys

__all__ = [
    "BENCHMARK_DATASETS",
    "REPO",
    "benchmark_dataset",
    "config_chain",
    "config_digest",
    "config_values",
    "finished_metrics",
    "load_records",
    "mask_rcnn_rows",
    "mixed_kernel_rows",
    "record_kernels",
    "recorded_metrics",
    "relative_weights",
    "save_records",
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What a benchmark's runs are of: the SynthLT benchmark's rows on another registered dataset are
# the same configs with these overrides (part of each run's stamp, so runs of two datasets are
# never mistaken for each other), their own output folder and records file. The class count is
# given as MODEL.ROI_HEADS.NUM_CLASSES; a one-stage row takes it on its head's key
# (synthlt_table.class_count_on_head). ``mask_by_default``: without --only, the Mask R-CNN rows
# run there (one-stage rows when named).
BENCHMARK_DATASETS = {
    "synthlt": {
        "title": "SynthLT",
        "train": "synthlt_train",
        "val": "synthlt_val",
        "opts": [],
        "output": "benchmark",
        "records": os.path.join("docs", "results", "synthlt_runs.json"),
        "default_records": False,  # the README's table: recorded on purpose, with --records
        "mask_by_default": False,
    },
    "fashionlt": {
        "title": "FashionLT",
        "train": "fashionlt_train",
        "val": "fashionlt_val",
        "opts": ["DATASETS.TRAIN", '("fashionlt_train",)', "DATASETS.TEST", '("fashionlt_val",)',
                 "MODEL.ROI_HEADS.NUM_CLASSES", "10"],
        "output": "benchmark_fashionlt",
        "records": os.path.join("docs", "results", "fashionlt_runs.json"),
        "default_records": True,
        "mask_by_default": True,
    },
}  # fmt: skip


def benchmark_dataset(name):
    """The entry of ``BENCHMARK_DATASETS`` for ``name``.

    Raises:
        ValueError: an unknown dataset (naming the known ones).
    """
    if name not in BENCHMARK_DATASETS:
        raise ValueError(
            f"unknown benchmark dataset {name!r}; choose one of {', '.join(BENCHMARK_DATASETS)}"
        )
    return BENCHMARK_DATASETS[name]


def config_chain(config):
    """``config`` and every file its ``_BASE_`` chain includes, the config first."""
    import yaml

    chain = [os.path.abspath(config)]
    while True:
        with open(chain[-1]) as f:
            base = (yaml.safe_load(f) or {}).get("_BASE_")
        if not base:
            return chain
        path = os.path.abspath(os.path.join(os.path.dirname(chain[-1]), os.path.expanduser(base)))
        if path in chain:
            sys.exit(f"[benchmark] {config}: its _BASE_ chain includes {path} twice")
        chain.append(path)


def _merge(base, child):
    """``child``'s keys over ``base``'s, nested mappings merged key by key (as detectron2
    merges a config over its ``_BASE_``)."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def config_values(config):
    """What ``config`` and its ``_BASE_`` chain set, merged as plain values (no defaults, no
    ``_BASE_`` key): two chains laid out differently that set the same values are equal."""
    import yaml

    merged = {}
    for path in reversed(config_chain(config)):
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        data.pop("_BASE_", None)
        merged = _merge(merged, data)
    return merged


def config_digest(*configs):
    """SHA-256 (first 16 hex digits) of the values ``configs`` set through their ``_BASE_``
    chains (:func:`config_values`): a run recorded before one of those values changed is
    another run; comments, layout and how the values are split across files do not count."""
    text = json.dumps([config_values(c) for c in configs], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mask_rcnn_rows(methods):
    """The rows of ``methods`` (tuples whose third item is a config) whose config chain sets
    MODEL.MASK_ON: the Mask R-CNN rows, without the box-only one-stage detectors."""
    return [m for m in methods if config_values(m[2]).get("MODEL", {}).get("MASK_ON")]


def relative_weights(stamp, out_root):
    """``stamp`` with an absolute MODEL.WEIGHTS made relative to ``out_root`` (stamps written
    before they named the source model relatively still match their run)."""
    opts = list(stamp.get("opts", []))
    if opts[:1] == ["MODEL.WEIGHTS"] and len(opts) > 1 and os.path.isabs(opts[1]):
        opts[1] = os.path.relpath(opts[1], out_root)
    return {**stamp, "opts": opts}


def finished_metrics(out, stamp):
    """The metrics of a finished run in the folder ``out`` (its ``benchmark_run.json``) with
    this stamp, else None."""
    try:
        with open(os.path.join(out, "benchmark_run.json")) as f:
            done = json.load(f)
        out_root = os.path.dirname(os.path.dirname(os.path.abspath(out)))
        return done["metrics"] if relative_weights(done["stamp"], out_root) == stamp else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def load_records(path):
    """A records file: {(key, seed): record}; {} if it does not exist yet.

    A records file lets a benchmark be run in parts, on different days or clones: a run whose
    stamp is recorded is read back, not repeated."""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            data = json.load(f)
            return {(r["key"], int(r["seed"])): r for r in data["runs"]}
        except (ValueError, KeyError, TypeError) as e:
            sys.exit(
                f"[benchmark] {path} is not a records file ({e!r}): it holds "
                '{"runs": [{"key", "seed", "stamp", "metrics", ...}]}; pass another --records '
                "path or move this file away"
            )


def save_records(path, new):
    """Add the ``new`` records to the file at ``path``, keeping every run already there (also
    those another benchmark command added meanwhile); sorted by row and seed, written
    atomically (a killed command leaves the old file) under a lock (two commands at once)."""
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)  # the folder: the file itself is replaced
        records = {**load_records(path), **new}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"runs": [records[k] for k in sorted(records)]}, f, indent=1)
        os.replace(tmp, path)
    finally:
        os.close(folder)  # releases the lock


def recorded_metrics(records, key, seed, stamp):
    """The recorded metrics of (``key``, ``seed``) if its record has this stamp, else None."""
    r = records.get((key, seed))
    return r["metrics"] if r is not None and r["stamp"] == stamp else None


def record_kernels(record):
    """The CPU kernel set a record's run used (older records name it only in their machine)."""
    if record.get("kernels"):
        return record["kernels"]
    found = re.search(r"\((\w+) kernels\)", record.get("machine", ""))
    return found.group(1) if found else "unknown"


def mixed_kernel_rows(records, runs):
    """{row: kernel sets} of the rows whose recorded seeds ran on more than one CPU kernel set:
    such a row's runs repeat bit for bit only each on its own kernel set."""
    mixed = {}
    for key, by_seed in runs.items():
        kernels = {record_kernels(records[(key, s)]) for s in by_seed if (key, s) in records}
        if len(kernels) > 1:
            mixed[key] = sorted(kernels)
    return mixed
