"""Benchmark rows: records appended one per row, and a re-run resumes past them."""

import torch

from iif_d2.classification.runner import load_records, row_key, run_rows

ROWS = [
    ("softmax", None, None),
    ("iif", "post_process", "smooth"),
    ("iif", "decoupled", "smooth"),
    ("balanced_softmax", None, None),
]


def test_rows_are_recorded_and_resumed(tmp_path):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 60 + [1] * 40)
    x = torch.rand(100, 1, 28, 28, generator=gen) + y.view(-1, 1, 1, 1) * 0.5
    data = {"train_x": x, "train_y": y, "test_x": x[::5], "test_y": y[::5], "counts": [60, 40]}
    path = str(tmp_path / "runs.json")
    new = run_rows(ROWS[:2], 3, 1, width=2, data=data, records_path=path, stage2_epochs=1)
    assert [r["method"] for r in load_records(path)] == ["softmax", "iif"]
    new += run_rows(ROWS, 3, 1, width=2, data=data, records_path=path, stage2_epochs=1)
    records = load_records(path)
    assert [row_key(r)[1:4] for r in records] == [tuple(r) for r in ROWS]
    assert len(new) == 4 and all(r["seed"] == 3 and r["epochs"] == 1 for r in records)
    # post-process shares the softmax model: same training, different inference
    assert records[0]["train_cpu_seconds"] == records[1]["train_cpu_seconds"]
    assert all(0.0 <= r["top1"] <= 100.0 and r["threads"] == 1 for r in records)
    assert run_rows(ROWS, 3, 1, width=2, data=data, records_path=path) == []
