"""The SynthLT benchmark's kit (iif_d2.bench: stats, records, synthlt_table, report) and
dev/benchmark_synthlt.py: the statistics behind every claim, the row selection, the records and
the report (the benchmark itself trains for hours: `make benchmark`)."""

import json
import math
import os
import re

import pytest
from helpers import fp_by_group_case, load_dev, load_tool

from iif_d2.bench import records as rec
from iif_d2.bench import report, stats
from iif_d2.bench import synthlt_table as table

script = load_dev("benchmark_synthlt")


def test_paired_difference_is_the_student_t_interval():
    d = stats.paired_difference([3.0, 4.0, 5.0], [1.0, 1.0, 1.0])  # differences 2, 3, 4
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * std 1 / sqrt(3)
    assert d["n"] == 3 and d["mean"] == pytest.approx(3.0) and d["std"] == pytest.approx(1.0)
    assert d["low"] == pytest.approx(3.0 - half) and d["high"] == pytest.approx(3.0 + half)
    one = stats.paired_difference([1.0], [0.5])
    assert one["mean"] == 0.5 and one["low"] is None
    with pytest.raises(ValueError):  # unpaired samples are a bug, not a shorter claim
        stats.paired_difference([1.0, 2.0], [1.0])


def test_verdicts():
    up = {"low": 0.5, "high": 2.0}
    assert stats.verdict(up, +1) == "shown"
    assert stats.verdict(up, -1) == "contradicted"  # the claim was "a lower than b"
    assert stats.verdict({"low": -0.1, "high": 2.0}, +1) == "not shown"
    assert stats.verdict({"low": -2.0, "high": -0.5}, -1) == "shown"
    assert stats.verdict({"low": None, "high": None}, +1).startswith("not shown")


def test_mean_std():
    assert stats.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert stats.mean_std([None, None]) == (None, None)
    assert stats.mean_std([4.0]) == (4.0, 0.0)


def test_row_selection_adds_the_rows_a_post_process_row_evaluates():
    keys = [m[0] for m in table.select_methods(["recipe"], quick=False)]
    assert keys == ["cos_norm_fasa_rfs", "recipe"]
    quick = [m[0] for m in table.select_methods(None, quick=True)]
    assert quick == [m[0] for m in table.METHODS if m[0] in table.QUICK_ROWS]
    assert len(table.select_methods(None, quick=False)) == len(table.METHODS)


def test_every_claim_names_two_rows_and_a_reported_metric():
    keys = {m[0] for m in table.METHODS}
    for claim, a, b, metric, sign in table.CLAIMS:
        assert a in keys and b in keys and a != b, claim
        assert metric in table.COLUMNS and sign in (+1, -1), claim
    quick_claims = [c for c in table.CLAIMS if {c[1], c[2]} <= set(table.QUICK_ROWS)]
    assert len(quick_claims) >= 8  # --quick: IIF against softmax and the post-hoc methods


def test_report_from_runs(tmp_path):
    seeds = [42, 43, 44]
    methods = table.select_methods(["iif_raw", "softmax"], quick=False)

    def metrics(ap, apr, fp):
        m = dict.fromkeys(table.COLUMNS, 1.0)
        return dict(m, AP=ap, APr=apr, **{"FP/img": fp, "run (s)": 1.0})

    runs = {
        "softmax": {s: metrics(30.0 + i, 10.0 + i, 3.0) for i, s in enumerate(seeds)},
        "iif_raw": {s: metrics(31.0 + i, 15.0 + 2 * i, 3.0) for i, s in enumerate(seeds)},
    }
    rows, claims = table.summarise(methods, runs, seeds)
    by_key = {r["key"]: r for r in rows}
    assert by_key["iif_raw"]["APr"] == pytest.approx(17.0)
    assert by_key["iif_raw"]["APr std"] == pytest.approx(2.0)
    apr = next(c for c in claims if c["claim"] == "IIF raises APr over softmax")
    assert apr["mean"] == pytest.approx(6.0) and apr["verdict"] == "shown"  # 5, 6, 7
    ap = next(c for c in claims if c["claim"] == "IIF raises AP over softmax")
    assert ap["std"] == 0.0 and ap["verdict"] == "shown"  # +1 on every seed
    assert all(c["a"] in runs and c["b"] in runs for c in claims)  # only claims with both rows
    out = tmp_path / "report"  # not there yet: a table read back from records made no run dir
    text = report.write_synthlt_report(rows, claims, runs, str(out), "header", table.COLUMNS)
    assert "17.0 ± 2.0" in text
    assert re.search(r"\| IIF raises APr over softmax +\| APr +\| \+6\.00 +\|", text), text
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["claims"][0]["verdict"] == "shown" and (out / "benchmark.png").exists()


def test_group_differences_split_a_claim_by_frequency_group():
    """Where an AP difference comes from: paired differences on the metric's own group columns
    (mask for AP, box for box AP); none for a metric without groups or a run without a column."""
    seeds = [42, 43]
    cols = {"APr": (5.0, 1.0), "APc": (2.0, 2.0), "APf": (-1.0, -3.0),
            "APr box": (4.0, 4.0), "APc box": (0.0, 0.0), "APf box": (1.0, 3.0)}  # fmt: skip
    runs = {
        "b": {s: dict.fromkeys(cols, 10.0) for s in seeds},
        "a": {s: {c: 10.0 + d[i] for c, d in cols.items()} for i, s in enumerate(seeds)},
    }
    mask = table.group_differences("a", "b", "AP", runs, seeds)
    assert list(mask) == ["APr", "APc", "APf"]
    assert mask["APr"]["mean"] == pytest.approx(3.0) and mask["APf"]["mean"] == pytest.approx(-2.0)
    assert mask["APc"]["std"] == 0.0
    box = table.group_differences("a", "b", "APr box", runs, seeds)
    assert list(box) == ["APr box", "APc box", "APf box"] and box["APf box"]["mean"] == 2.0
    assert table.group_differences("a", "b", "FP/img", runs, seeds) == {}  # not recorded
    del runs["a"][43]["APc"]
    assert table.group_differences("a", "b", "AP", runs, seeds) == {}


def test_the_benchmark_records_false_positives_by_frequency_group(tmp_path):
    """A run's FP/img and its split by the frequency group of the detection's class (what the
    benchmark records): a false positive counts in its detection's group; COCO-format ground
    truth has no groups."""
    gt, dets, expected = fp_by_group_case()
    (tmp_path / "inference").mkdir()
    (tmp_path / "inference" / "lvis_instances_results.json").write_text(json.dumps(dets))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    fp, _ = script.fp_stats(str(tmp_path), str(tmp_path / "gt.json"), 0.3)
    assert fp["fp_per_image"] == 1.5
    groups = table.fp_by_group(fp)
    assert groups == expected
    assert list(groups) == list(table.FP_GROUPS)
    runs = {k: {s: {"FP/img": 1.5, **groups} for s in (1, 2)} for k in ("a", "b")}
    runs["a"][2] = {"FP/img": 1.0, "FP/img r": 0.5, "FP/img c": 0.5, "FP/img f": 0.0}
    diff = table.group_differences("a", "b", "FP/img", runs, [1, 2])
    assert diff["FP/img r"]["mean"] == -0.25 and diff["FP/img f"]["mean"] == 0.0
    for img in gt["images"]:
        del img["neg_category_ids"], img["not_exhaustive_category_ids"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    coco, _ = script.fp_stats(str(tmp_path), str(tmp_path / "gt.json"), 0.3)
    assert table.fp_by_group(coco) == {}


def test_demo_band_round_trip(tmp_path):
    demo = load_tool("demo")
    seeds = [42, 43]
    cols = {"AP": 30.0, "APr": 20.0, "APc": 30.0, "APf": 40.0, "APbox": 25.0, "APr box": 15.0}
    runs = {"iif_raw": {42: dict(cols), 43: {k: v + 2.0 for k, v in cols.items()}}}
    band = table.demo_band(runs, seeds, 1, "test machine")
    assert band["metrics"]["segm"]["APr"] == [21.0, pytest.approx(math.sqrt(2.0))]
    assert band["metrics"]["bbox"]["AP"][0] == 26.0
    path = tmp_path / "band.json"
    path.write_text(json.dumps(band))
    loaded = demo.load_band(str(path))
    # 2 seeds: t(0.975, 1) * sqrt(1 + 1/2) = 12.706 * 1.2247 = 15.56 std
    apr = loaded["metrics"]["segm"]["APr"]
    assert demo.band_half_width(1.0, 2) == pytest.approx(15.562, abs=1e-3)
    assert demo.in_band(21.0 + 15.5 * math.sqrt(2.0), *apr, n=2)
    assert not demo.in_band(21.0 + 15.7 * math.sqrt(2.0), *apr, n=2)
    assert not demo.in_band(21.0 + 3.1 * math.sqrt(2.0), *apr, n=5)  # 5 seeds: 3.04 std
    assert demo.in_band(21.0 + 3.0 * math.sqrt(2.0), *apr, n=5)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        demo.band_half_width(1.0, 1)
    assert demo.load_band(str(tmp_path / "missing.json")) is None


def test_demo_says_when_the_band_comes_from_other_kernels(capsys):
    """Another CPU or kernel set trains another model from the same seed: the demo says so."""
    from iif_d2.utils.machine import describe_machine

    demo = load_tool("demo")
    cols = {"AP": 30.0, "APr": 20.0, "APc": 30.0, "APf": 40.0, "APbox": 25.0, "APr box": 15.0}
    runs = {"iif_raw": {42: dict(cols), 43: {k: v + 2.0 for k, v in cols.items()}}}
    results = {"segm": {"AP": 31.0, "APr": 21.0, "APc": 31.0, "APf": 41.0},
               "bbox": {"AP": 26.0, "APr": 16.0}}  # fmt: skip
    for machine, noted in (("Some Other CPU (AVX2 kernels), 2 cores", True),
                           (describe_machine(), False)):  # fmt: skip
        demo.print_band(results, table.demo_band(runs, [42, 43], 1, machine))
        out = capsys.readouterr().out
        assert ("another CPU or kernel set" in out) is noted, out
        assert "all inside the band" in out


def test_demo_holds_cpu_runs_to_the_readme_threads_and_kernels():
    """On CPU the demo runs 2 threads on AVX2 kernels (the README's numbers repeat bit for bit
    there); what the user sets wins; a GPU run is left alone."""
    from iif_d2.utils.machine import KERNEL_PINS, native_capability

    demo = load_tool("demo")
    env, opts, label = demo.pinned_run(None, ["SOLVER.MAX_ITER", "10"], "cpu")
    assert opts == ["NUM_THREADS", "2"]
    if native_capability() in ("AVX2", "AVX512"):
        assert env == KERNEL_PINS["avx2"] and label == "2 thread(s), avx2 kernels"
    env, opts, label = demo.pinned_run("native", ["NUM_THREADS", "1"], "cpu")
    assert env == {} and opts == []
    assert label == f"1 thread(s), {native_capability()} kernels (native)"
    assert demo.pinned_run("default", [], "cpu")[0] == KERNEL_PINS["default"]
    assert demo.pinned_run(None, [], "cuda") == ({}, [], "")


def test_identical_runs_repeat_the_reference_bit_for_bit():
    ref = {"runs": {"softmax": {"42": {"AP": 1.5, "train s/it": 0.3}, "43": {"AP": 2.0}}}}
    runs = {"softmax": {42: {"AP": 1.5, "train s/it": 0.9}, 43: {"AP": 2.0 + 1e-12},
                        44: {"AP": 3.0}}}  # fmt: skip
    same, other = table.identical_runs(runs, ref)
    assert same == [("softmax", 42)] and other == [("softmax", 43)]  # seed 44: not in both
    text = report.comparison_text([], [], "ref.json", (same, other))
    assert "1 of 2 runs in both repeat" in text and "differ: softmax seed 43" in text


def test_welch_difference_matches_scipy():
    from scipy import stats as scipy_stats

    a, b = [14.8, 16.0, 13.9], [15.9, 14.9, 13.3, 15.0]
    mean_std = [stats.mean_std(x) for x in (a, b)]
    d, low, high = stats.welch_difference(*mean_std[0], len(a), *mean_std[1], len(b))
    ci = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d == pytest.approx(sum(a) / 3 - sum(b) / 4)
    assert stats.welch_difference(2.0, 0.0, 3, 1.0, 0.0, 3) == (1.0, 1.0, 1.0)


def test_compare_tables_flags_cells_and_changed_verdicts():
    seeds = [42, 43, 44]
    methods = table.select_methods(["iif_raw", "softmax"], quick=False)

    def runs_with(iif_apr):
        def metrics(ap, apr):
            return dict(dict.fromkeys(table.COLUMNS, 1.0), AP=ap, APr=apr, **{"run (s)": 1.0})

        return {
            "softmax": {s: metrics(30.0 + i, 10.0 + i) for i, s in enumerate(seeds)},
            "iif_raw": {s: metrics(30.5 + i, v) for (i, s), v in zip(enumerate(seeds), iif_apr)},
        }

    ref_rows, ref_claims = table.summarise(methods, runs_with([10.0, 11.0, 12.0]), seeds)
    rows, claims = table.summarise(methods, runs_with([20.0, 21.5, 22.0]), seeds)
    cells, verdicts = table.compare_tables(rows, claims, {"rows": ref_rows, "claims": ref_claims})
    bad = [(c["key"], c["metric"]) for c in cells if not c["consistent"]]
    assert bad == [("iif_raw", "APr")]  # +10 points with stds near 1: outside
    assert ("IIF raises APr over softmax", "not shown", "shown") in verdicts
    text = report.comparison_text(cells, verdicts, "ref.json")
    assert f"{len(cells) - 1} of {len(cells)} cells consistent" in text
    assert re.search(r"\| IIF raw +\| APr +\|", text), text


def _record(key, seed, out_root, machine="machine A", ap=30.0):
    by_key = {m[0]: m for m in table.METHODS}
    _, _, config, weights_of = by_key[key]
    _, _, stamp = table.run_plan(key, seed, config, weights_of, str(out_root), ["NUM_THREADS", "1"])
    metrics = dict.fromkeys(table.COLUMNS, ap)
    return {"key": key, "seed": seed, "stamp": stamp, "metrics": metrics, "machine": machine}


def test_a_post_process_stamp_does_not_name_the_clone(tmp_path):
    by_key = {m[0]: m for m in table.METHODS}
    _, _, config, weights_of = by_key["iif_post"]
    a = table.run_plan("iif_post", 42, config, weights_of, str(tmp_path / "a"), [])
    b = table.run_plan("iif_post", 42, config, weights_of, str(tmp_path / "b"), [])
    assert a[2] == b[2] and a[1] != b[1]  # same stamp, each run reads its own clone's model
    assert a[1][:2] == [
        "MODEL.WEIGHTS",
        str(tmp_path / "a" / "softmax" / "seed42" / "model_final.pth"),
    ]


def test_records_answer_a_benchmark_without_running_it(tmp_path):
    methods = table.select_methods(["iif_post"], quick=False)  # softmax + its post-process row
    records = {(k, s): _record(k, s, tmp_path, ap=float(s)) for k in ("softmax", "iif_post")
               for s in (42, 43)}  # fmt: skip
    path = str(tmp_path / "runs.json")
    rec.save_records(path, records)
    loaded = rec.load_records(path)
    assert loaded == records
    # every run is recorded: nothing trains, the metrics are the records'
    runs = script.run_all(
        methods, [42, 43], str(tmp_path), ["NUM_THREADS", "1"], None, 0.3, 1, loaded
    )
    assert runs["iif_post"][43]["AP"] == 43.0 and runs["softmax"][42]["AP"] == 42.0
    # another thread count is another run: its stamp differs, so the record does not answer it
    assert table.from_records(methods, [42], str(tmp_path), ["NUM_THREADS", "2"], loaded) == {}


def test_run_order_keeps_two_trainings_going():
    """A post-process row waits for its source's model: it is queued after the next seed's
    trained rows, so that two workers train two seeds at once instead of one waiting."""
    methods = table.select_methods(["iif_post", "iif_raw"], quick=False)
    order = [(m[0], s) for m, s in script.run_order(methods, [42, 43, 44])]
    assert len(order) == len(set(order)) == 3 * len(methods)
    trained = [k for k, s in order if s == 42 and k != "iif_post"]
    assert set(trained) == {"softmax", "iif_raw"}
    assert order[:4] == [(k, 42) for k in trained] + [(k, 43) for k in trained]
    assert order[4] == ("iif_post", 42) and order[-1] == ("iif_post", 44)
    for i, (key, seed) in enumerate(order):  # every model is queued before its evaluation
        if key == "iif_post":
            assert order.index(("softmax", seed)) < i


def test_an_unrecorded_post_process_run_retrains_its_source(tmp_path):
    methods = table.select_methods(["iif_post"], quick=False)
    opts = ["NUM_THREADS", "1"]
    records = {("softmax", 42): _record("softmax", 42, tmp_path)}
    # the softmax record has metrics but no model: the post-process row needs one, so softmax
    # is trained again
    assert table.from_records(methods, [42], str(tmp_path), opts, records) == {}
    model = tmp_path / "softmax" / "seed42" / "model_final.pth"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    assert set(table.from_records(methods, [42], str(tmp_path), opts, records)) == {("softmax", 42)}


def test_record_runs_keeps_where_each_run_ran(tmp_path):
    methods = table.select_methods(["softmax"], quick=False)
    opts = ["NUM_THREADS", "1"]
    records = {("softmax", 42): _record("softmax", 42, tmp_path, machine="machine A")}
    runs = {"softmax": {42: records[("softmax", 42)]["metrics"], 43: {"AP": 1.0}}}
    machines = table.record_runs(records, methods, runs, str(tmp_path), opts, "machine B", "AVX512")
    assert machines == {"machine A", "machine B"}
    assert records[("softmax", 42)]["machine"] == "machine A"
    assert records[("softmax", 43)]["machine"] == "machine B"
    assert records[("softmax", 43)]["kernels"] == "AVX512"


def test_a_row_whose_seeds_ran_on_two_kernel_sets_is_named(tmp_path):
    # an older record names its kernel set only inside its machine line
    records = {
        ("softmax", 42): _record("softmax", 42, tmp_path, machine="EPYC (AVX2 kernels)"),
        ("softmax", 43): {**_record("softmax", 43, tmp_path), "kernels": "AVX512"},
        ("balanced", 42): _record("balanced", 42, tmp_path, machine="EPYC (AVX2 kernels)"),
        ("balanced", 43): {**_record("balanced", 43, tmp_path), "kernels": "AVX2"},
    }
    runs = {"softmax": {42: {}, 43: {}}, "balanced": {42: {}, 43: {}}}
    assert rec.mixed_kernel_rows(records, runs) == {"softmax": ["AVX2", "AVX512"]}
    assert rec.record_kernels({"machine": "somewhere"}) == "unknown"


def test_a_file_that_is_not_records_is_an_error_naming_it(tmp_path):
    path = tmp_path / "runs.json"
    path.write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="not a records file"):
        rec.load_records(str(path))
    assert rec.load_records(str(tmp_path / "absent.json")) == {}


def test_saving_records_keeps_the_runs_another_command_added(tmp_path):
    path = str(tmp_path / "runs.json")
    a = {("softmax", 42): _record("softmax", 42, tmp_path, ap=1.0)}
    b = {("softmax", 43): _record("softmax", 43, tmp_path, ap=2.0)}
    rec.save_records(path, a)  # two commands that both started from an empty file
    rec.save_records(path, b)
    assert rec.load_records(path) == {**a, **b}
    again = {("softmax", 42): _record("softmax", 42, tmp_path, ap=3.0)}
    rec.save_records(path, again)  # a run recorded anew replaces its old record
    assert rec.load_records(path)[("softmax", 42)]["metrics"]["AP"] == 3.0
    assert sorted(os.listdir(tmp_path)) == ["runs.json"]  # no lock or temporary file left


def test_a_finished_post_process_run_needs_no_model(tmp_path):
    methods = table.select_methods(["iif_post"], quick=False)
    opts = ["NUM_THREADS", "1"]
    records = {("softmax", 42): _record("softmax", 42, tmp_path)}
    done = _record("iif_post", 42, tmp_path)
    (tmp_path / "iif_post" / "seed42").mkdir(parents=True)
    with open(tmp_path / "iif_post" / "seed42" / "benchmark_run.json", "w") as f:
        json.dump({"stamp": done["stamp"], "metrics": done["metrics"]}, f)
    # the post-process run is finished in the output folder: softmax's record answers, no model
    found = table.from_records(methods, [42], str(tmp_path), opts, records)
    assert set(found) == {("softmax", 42)}


def test_a_finished_run_stamped_with_an_absolute_model_path_is_found(tmp_path):
    # benchmark_run.json files written before stamps named the source model relatively
    by_key = {m[0]: m for m in table.METHODS}
    _, _, config, weights_of = by_key["iif_post"]
    out, opts, stamp = table.run_plan("iif_post", 42, config, weights_of, str(tmp_path), [])
    old = {**stamp, "opts": opts}  # MODEL.WEIGHTS absolute, as the run's own overrides
    assert os.path.isabs(old["opts"][1])
    os.makedirs(out)
    with open(os.path.join(out, "benchmark_run.json"), "w") as f:
        json.dump({"stamp": old, "metrics": {"AP": 1.0}}, f)
    assert rec.finished_metrics(out, stamp) == {"AP": 1.0}
    # another source model is another run
    other = {**stamp, "opts": ["MODEL.WEIGHTS", "elsewhere.pth", *stamp["opts"][2:]]}
    assert rec.finished_metrics(out, other) is None


def test_a_record_made_before_its_config_changed_is_not_read_back(tmp_path):
    # a copy of a row's config chain: the stamp names the text of every file in it
    base = tmp_path / "Base.yaml"
    child = tmp_path / "child.yaml"
    base.write_text("SOLVER:\n  MAX_ITER: 10\n")
    child.write_text('_BASE_: "Base.yaml"\nSEED: 1\n')
    assert rec.config_chain(str(child)) == [str(child), str(base)]
    before = rec.config_digest(str(child))
    base.write_text("SOLVER:\n  MAX_ITER: 11\n")  # the base edited, the child untouched
    assert rec.config_digest(str(child)) != before
    # the shipped rows: a record with another digest is another run
    methods = table.select_methods(["softmax"], quick=False)
    record = _record("softmax", 42, tmp_path)
    records = {("softmax", 42): record}
    assert table.from_records(methods, [42], str(tmp_path), ["NUM_THREADS", "1"], records)
    stale = {**record, "stamp": {**record["stamp"], "config_sha256": before}}
    assert (
        table.from_records(
            methods, [42], str(tmp_path), ["NUM_THREADS", "1"], {("softmax", 42): stale}
        )
        == {}
    )


def test_a_post_process_stamp_names_its_source_rows_config(tmp_path):
    by_key = {m[0]: m for m in table.METHODS}
    _, _, config, weights_of = by_key["norcal"]
    stamp = table.run_plan("norcal", 42, config, weights_of, str(tmp_path), [])[2]
    assert stamp["config_sha256"] == rec.config_digest(config, by_key["softmax"][2])
    assert stamp["config_sha256"] != rec.config_digest(config)


def test_a_base_chain_that_loops_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text('_BASE_: "b.yaml"\n')
    (tmp_path / "b.yaml").write_text('_BASE_: "a.yaml"\n')
    with pytest.raises(SystemExit, match="twice"):
        rec.config_chain(str(tmp_path / "a.yaml"))


@pytest.mark.parametrize(
    "key, head", [("softmax", "ROI_HEADS"), ("retinanet_iif", "RETINANET"), ("fcos", "FCOS")]
)
def test_a_benchmark_datasets_class_count_reaches_each_rows_head(key, head):
    """FashionLT's overrides give its 10 classes as MODEL.ROI_HEADS.NUM_CLASSES; a one-stage
    row's run sets them on its own head's key, so the built config has 10 classes where the
    model reads them and passes the run checks (a key the model ignores would be refused).
    The Mask R-CNN rows' overrides, and so their recorded stamps, are unchanged."""
    from iif_d2.bench.runner import train_config
    from iif_d2.engine.config_files import check_run_config

    by_key = {m[0]: m for m in table.METHODS}
    _, _, config, _ = by_key[key]
    opts = rec.benchmark_dataset("fashionlt")["opts"]
    out, run_opts, stamp = table.run_plan(key, 42, config, None, "out", opts)
    cfg = train_config(config, run_opts)
    assert cfg.MODEL[head].NUM_CLASSES == 10
    check_run_config(cfg)
    assert ("MODEL.ROI_HEADS.NUM_CLASSES" in run_opts) == (head == "ROI_HEADS")
    assert stamp["opts"][-len(opts):] == (opts if head == "ROI_HEADS" else [
        o.replace("ROI_HEADS", head) for o in opts])  # fmt: skip
