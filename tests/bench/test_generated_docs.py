"""The results pages and the README's results table are what dev/make_docs.py generates from
the records in docs/results/ (`make docs` rewrites them; nothing is pasted by hand)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, fp_by_group_case, load_dev

from iif_d2.bench import report

make_docs = load_dev("make_docs")


@pytest.fixture(scope="module")
def generated():
    return make_docs.generate()


def test_every_committed_page_is_what_its_records_generate(generated):
    pages, _, _ = generated
    assert set(pages) == {make_docs.SYNTHLT_PAGE, make_docs.SPEED_PAGE, make_docs.FASHIONLT_PAGE}
    for path, text in pages.items():
        with open(path) as f:
            assert f.read() == text, f"{path} differs from its records: run make docs"


def test_the_readme_results_table_is_the_records(generated):
    _, rows, _ = generated
    with open(make_docs.README) as f:
        text = f.read()
    assert report.README_BEGIN in text and report.README_END in text, "README.md: no markers"
    assert make_docs.readme_text(rows) == text, "README.md's results table: run make docs"
    block = text.split(report.README_BEGIN)[1].split(report.README_END)[0]
    table = [line for line in block.splitlines() if line.startswith("| ")]
    assert len(table) == len(make_docs.readme_rows(rows)) + 1  # the header and one per row


def test_each_page_names_its_hardware_seeds_and_command(generated):
    pages, rows, q_rows = generated
    synthlt, speed = pages[make_docs.SYNTHLT_PAGE], pages[make_docs.SPEED_PAGE]
    assert len(rows) >= 17 and rows[0]["seeds"] == [42, 43, 44, 45, 46]
    assert "5 seeds (42-46)" in synthlt and "3 seeds (42-44)" in synthlt
    assert "AMD EPYC" in synthlt and "CPU kernels: AVX2" in synthlt
    assert "`python dev/benchmark_synthlt.py --seeds 5" in synthlt
    assert synthlt.count("| IIF raises APr over softmax") == 2  # the full and the quick table
    assert "| IIF on FCOS (box AP)" in synthlt and "contradicted" in synthlt
    assert {r["key"] for r in q_rows} == {"softmax", "iif_raw", "iif_post", "la_posthoc",
                                         "norcal", "fracal"}  # fmt: skip
    assert "threads: 1" in speed and "CPU kernels: AVX2" in speed
    assert "dev/benchmark_speed.py --task head" in speed and "tools/benchmark.py" in speed


def test_fashionlt_page_shows_each_claim_on_both_sets(generated):
    """Every Mask R-CNN claim, and each claim of the one-stage rows run on FashionLT, is on the
    FashionLT page with SynthLT's verdict beside it; Mask R-CNN rows without runs are named as
    not yet measured; hardware and command are named."""
    from iif_d2.bench.records import benchmark_dataset, load_records, mask_rcnn_rows
    from iif_d2.bench.synthlt_table import CLAIMS, GROUP_COLUMNS, METHODS

    pages, _, _ = generated
    page = pages[make_docs.FASHIONLT_PAGE]
    mask_rows = {m[0] for m in mask_rcnn_rows(METHODS)}
    assert {"softmax", "iif_raw", "iif_post", "norcal", "fracal", "recipe"} <= mask_rows
    assert not any(k.startswith(("retinanet", "fcos")) for k in mask_rows)  # box-only rows
    records = load_records(make_docs.FASHIONLT_RECORDS)
    measured = {k for k, _ in records}
    shown = mask_rows | (measured & set(make_docs.ONE_STAGE))
    for claim, a, b, metric, _ in CLAIMS:
        line = next((x for x in page.splitlines() if x.startswith(f"| {claim} ")), None)
        if a in shown and b in shown:
            cells = [c.strip() for c in line.split("|")[1:-1]]
            assert cells[1] == metric and cells[3] in ("shown", "not shown", "contradicted")
            assert cells[5] in ("shown", "contradicted", "–") or cells[5].startswith("not shown")
        else:
            assert line is None  # a one-stage row not run on FashionLT
    assert "python dev/benchmark_synthlt.py --dataset fashionlt" in page
    differs = page.split("## What differs")[1].split("\n\n")[2].splitlines()
    with open(make_docs.FASHIONLT_ANALYSIS) as f:
        fp_rows = json.load(f).get("false_positives", {})
    for line in differs:  # a differing AP claim says which frequency groups moved, on both sets
        claim = next(c for c in CLAIMS if line.startswith(f"- {c[0]}: "))
        if claim[3] == "FP/img":  # SynthLT's records have no groups
            assert "SynthLT FP/img" not in line
            if claim[1] in fp_rows and claim[2] in fp_rows:
                assert "FashionLT FP/img r" in line
        elif claim[3] in GROUP_COLUMNS:
            assert (
                "by frequency group" in line and "SynthLT APr" in line and "FashionLT APr" in line
            )
    assert "## One-stage detectors (box AP)" in page
    missing = sorted(mask_rows - measured)
    line = next(x for x in page.splitlines() if x.startswith("- not yet measured: "))
    for key in missing:
        assert key in line
    if records:
        assert "- hardware:" in page and "CPU kernels:" in page
    assert benchmark_dataset("fashionlt")["records"] == os.path.relpath(
        make_docs.FASHIONLT_RECORDS, ROOT
    )
    with pytest.raises(ValueError, match="synthlt, fashionlt"):
        benchmark_dataset("coco")


def test_each_group_of_rows_is_shown_over_its_own_seeds():
    """The FashionLT page's Mask R-CNN table and one-stage table each go over the seeds of their
    own most-seeded row: one-stage runs on more seeds do not hide the Mask R-CNN rows."""
    from iif_d2.bench.synthlt_table import METHODS

    by_key = {m[0]: m for m in METHODS}
    runs = {"softmax": {42: {}}, "iif_raw": {42: {}}, "retinanet": {42: {}, 43: {}}}
    seeds, complete, partial, missing = make_docs._complete_rows(
        [by_key["softmax"], by_key["iif_raw"], by_key["balanced"]], runs
    )
    assert seeds == [42] and [m[0] for m in complete] == ["softmax", "iif_raw"]
    assert partial == {} and missing == ["balanced"]
    runs["iif_raw"][43] = {}
    seeds, complete, partial, _ = make_docs._complete_rows(
        [by_key["softmax"], by_key["iif_raw"]], runs
    )
    assert seeds == [42, 43] and [m[0] for m in complete] == ["iif_raw"]
    assert partial == {"softmax": [42]}


def test_fashionlt_confusion_counts_the_best_covering_detection():
    """dev/fashionlt_figures.py's look-alike confusion: a garment is taken for the class of the
    best-scoring detection covering it (IoU >= 0.5); one no detection covers is "none"."""
    figures = load_dev("fashionlt_figures")
    gt = {"annotations": [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10]},
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]},
    ]}  # fmt: skip
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 9], "score": 0.4},
        {"image_id": 1, "category_id": 2, "bbox": [1, 0, 10, 10], "score": 0.6},  # taken for 2
        {"image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "score": 0.9},  # covers none
        {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.1},
    ]
    shares = figures.confusion(gt, dets, 2)
    assert shares.tolist() == [[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]


def test_fashionlt_false_positives_are_the_benchmarks_split_by_group():
    """The FP/img that dev/fashionlt_figures.py splits by frequency group is the benchmark's
    recorded FP/img of the same run, its groups add up to it, and they are the groups the
    benchmark recorded where it did."""
    from iif_d2.bench.records import load_records
    from iif_d2.bench.synthlt_table import FP_GROUPS

    records = load_records(make_docs.FASHIONLT_RECORDS)
    with open(make_docs.FASHIONLT_ANALYSIS) as f:
        fps = json.load(f).get("false_positives", {})
    for key, by_seed in fps.items():
        for seed, fp in by_seed.items():
            metrics = records[key, int(seed)]["metrics"]
            assert fp["FP/img"] == pytest.approx(metrics["FP/img"])
            assert sum(fp[c] for c in FP_GROUPS) == pytest.approx(fp["FP/img"])
            for c in FP_GROUPS:  # a run that records its groups: the same numbers
                assert fp[c] == pytest.approx(metrics.get(c, fp[c]))


def test_fashionlt_false_positives_count_each_group_of_the_detections_class(tmp_path):
    """dev/fashionlt_figures.py's false positives for runs recorded without their groups: a
    false positive counts in the group of its detection's class; a row without saved results
    for every seed is left out; the page takes them only where a run's record lacks them."""
    figures = load_dev("fashionlt_figures")
    gt, dets, expected = fp_by_group_case()
    for key, seeds in (("softmax", (1, 2)), ("iif_raw", (1,))):
        for seed in seeds:
            out = tmp_path / key / f"seed{seed}" / "inference"
            out.mkdir(parents=True)
            (out / "lvis_instances_results.json").write_text(json.dumps(dets))
    fps = figures.false_positives(str(tmp_path), [1, 2], gt)
    assert list(fps) == ["softmax"]  # iif_raw lacks seed 2
    one = {"FP/img": 1.5, **expected}
    assert fps["softmax"] == {"1": one, "2": one}
    recorded = {"AP": 1.0, "FP/img r": 0.25, "FP/img c": 0.75, "FP/img f": 0.0}
    runs = {"softmax": {1: recorded, 2: {"AP": 2.0}}}
    merged = make_docs._with_fp_groups(runs, {"false_positives": fps})
    assert merged["softmax"][2] == {"AP": 2.0, **expected}
    assert merged["softmax"][1] == recorded  # a run that records its groups keeps them
    assert runs["softmax"][2] == {"AP": 2.0}  # the records' metrics are left as they were


def test_the_readme_block_replaces_only_what_lies_between_the_markers():
    text = f"intro\n{report.README_BEGIN}\nold\ntable\n{report.README_END}\noutro\n"
    new = report.replace_between_markers(text, "NEW")
    assert new == f"intro\n{report.README_BEGIN}\nNEW\n{report.README_END}\noutro\n"
    for broken in ("no markers\n", f"{report.README_END}\n{report.README_BEGIN}\n"):
        with pytest.raises(ValueError, match="results:begin.*make docs"):
            report.replace_between_markers(broken, "NEW")


@pytest.mark.slow
def test_make_docs_refuses_a_readme_without_markers_and_changes_nothing(tmp_path):
    """The command on a copy of the repository whose README lost its markers: a one-line
    message naming them, exit 1, and no page rewritten."""
    copy = tmp_path / "repo"
    skip = shutil.ignore_patterns("__pycache__", "*.png")
    for sub in ("docs", "dev", "configs", "iif_d2"):
        shutil.copytree(os.path.join(ROOT, sub), copy / sub, ignore=skip)
    (copy / "README.md").write_text("# a README without the results markers\n")
    page = copy / "docs" / "benchmarks" / "synthlt.md"
    page.write_text("stale\n")
    r = subprocess.run(
        [sys.executable, str(copy / "dev" / "make_docs.py")],
        capture_output=True, text=True, cwd=copy, env={**os.environ, "PYTHONPATH": str(copy)},
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0 and "<!-- results:begin -->" in r.stderr
    assert page.read_text() == "stale\n"


def test_one_stage_iif_configs_say_what_the_page_shows():
    """The one-stage IIF configs' first line calls them "Not a recommendation" exactly while
    no IIF form raises box APr over its plain detector on the SynthLT page (read from the
    records)."""
    import glob

    from iif_d2.bench.records import load_records
    from iif_d2.bench.synthlt_table import METHODS, summarise

    runs, seeds = make_docs._runs(load_records(make_docs.SYNTHLT_RECORDS))
    _, claims = summarise(METHODS, runs, seeds)
    iif_helps = any(
        c["a"].startswith(("retinanet_iif", "fcos_iif"))
        and c["b"] in ("retinanet", "fcos")
        and c["metric"] == "APr box"
        and c["verdict"] == "shown"
        for c in claims
    )
    configs = [
        p
        for family in ("COCO-Detection", "LVISv1-Detection", "SynthLT-Detection")
        for p in glob.glob(os.path.join(ROOT, "configs", family, "*.yaml"))
        if os.path.basename(p).startswith(("retinanet", "fcos")) and p.endswith("_iif.yaml")
    ]
    assert len(configs) >= 5
    for path in configs:
        with open(path) as f:
            first = f.readline()
        assert first.startswith("# Not a recommendation") != iif_helps, path
