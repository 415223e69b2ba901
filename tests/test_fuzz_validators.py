"""Property-based tests (Hypothesis): random malformed inputs to the validators at the project's
boundaries — the training dicts (iif_d2.data.validate), LVIS results (iif_d2.lvis_eval.data)
and counts files (iif_d2.data.class_stats.load_counts_file, CSV and JSON) — each end in a
ValueError (the project's errors are ValueErrors) with a one-line message, or in a correct
result; never another exception type, a hang (each example has a deadline) or a memory
blow-up (they run under an address-space cap). Derandomized: the same examples on every run."""

import io
import json
import math
import os
import resource
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from iif_d2.data.class_stats import ClassStats, count_dataset_dicts, load_counts_file
from iif_d2.data.validate import validate_dataset_dicts
from iif_d2.lvis_eval.data import LVISDetections, LVISGroundTruth, read_results

FUZZ = settings(
    max_examples=120,
    deadline=timedelta(seconds=5),  # generous on a shared machine; a hang fails it
    derandomize=True,  # CI repeats the same examples
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
HEADROOM = 2 * 1024**3  # bytes of address space the validators may add to the process


@pytest.fixture(autouse=True)
def memory_cap():
    """Cap this process's address space at its present size + HEADROOM while a test runs
    (RLIMIT_AS: an allocation beyond it raises MemoryError, which fails the test), then lift
    the cap again."""
    try:
        with open("/proc/self/status") as f:
            size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    except (OSError, StopIteration):
        yield  # not Linux: no cap
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + HEADROOM
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _one_line_value_error(error: BaseException):
    event("refused")  # --hypothesis-show-statistics: how many were refused, how many accepted
    assert isinstance(error, ValueError), f"{type(error).__name__}: {error}"
    assert not isinstance(error, MemoryError)
    text = str(error)
    assert text and "\n" not in text, text


# json-like values of any shape, and numbers that are almost right
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
ANYTHING = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
VALID = st.one_of(st.floats(0, 60), st.integers(0, 60))
NUMBERS = st.one_of(  # mostly valid, sometimes not
    VALID,
    VALID,
    VALID,
    st.floats(-40, 60),
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, True, None, "3", [1]]),
)


# ------------------------------------------------------------------ the training dicts
ANNOTATION = st.fixed_dictionaries(
    {
        "bbox": st.one_of(
            st.lists(NUMBERS, min_size=4, max_size=4),
            st.lists(VALID, min_size=4, max_size=4),
            st.lists(NUMBERS, max_size=5),
            ANYTHING,
        ),
        "bbox_mode": st.sampled_from([0, 1, 1, 1, 4, 2, "XYWH", None]),
        "category_id": st.integers(0, 1),
    },
    optional={
        "segmentation": st.one_of(
            st.lists(st.lists(NUMBERS, max_size=10), max_size=3),
            st.lists(st.lists(VALID, min_size=6, max_size=10), min_size=1, max_size=2),
            st.fixed_dictionaries({"counts": ANYTHING, "size": st.lists(NUMBERS, max_size=3)}),
            ANYTHING,
        ),
        "iscrowd": st.sampled_from([0, 1, None]),
        "id": st.integers(0, 9),
    },
)
RECORD = st.fixed_dictionaries(
    {
        "file_name": st.sampled_from(["a.jpg", "b.jpg", "/nonexistent/c.png"]),
        "annotations": st.one_of(
            st.lists(st.one_of(ANNOTATION, ANNOTATION, ANYTHING), max_size=4), ANYTHING
        ),
    },
    optional={
        "image_id": st.one_of(
            st.integers(0, 3), st.text(max_size=1), st.lists(SCALARS, max_size=1)
        ),
        "width": NUMBERS,
        "height": NUMBERS,
    },
)


# valid records, with what detectron2 drops (short polygons, empty boxes) now and then
VALID_ANNOTATION = st.fixed_dictionaries(
    {
        "bbox": st.lists(st.integers(0, 30), min_size=4, max_size=4),
        "bbox_mode": st.just(1),
        "category_id": st.integers(0, 1),
        "segmentation": st.lists(st.lists(VALID, min_size=4, max_size=10), min_size=1, max_size=2),
    }
)
VALID_RECORDS = st.lists(
    st.fixed_dictionaries(
        {
            "file_name": st.just("a.jpg"),
            "width": st.integers(2, 40),
            "height": st.integers(2, 40),
            "annotations": st.lists(VALID_ANNOTATION, max_size=3),
        }
    ),
    min_size=1,
    max_size=4,
).map(lambda records: [dict(r, image_id=i, file_name=f"{i}.jpg") for i, r in enumerate(records)])


@FUZZ
@given(dicts=st.one_of(VALID_RECORDS,
                       st.lists(st.one_of(RECORD, RECORD, ANYTHING), min_size=1, max_size=4)),
       masks=st.booleans(), filter_empty=st.booleans())  # fmt: skip
def test_dataset_validator(dicts, masks, filter_empty):
    try:
        out = validate_dataset_dicts(dicts, "fuzz", filter_empty=filter_empty, masks=masks)
    except Exception as e:  # noqa: BLE001 (the property is about the type)
        _one_line_value_error(e)
        assert str(e).startswith("dataset 'fuzz'")
        return
    event("accepted")
    # correct: checking what it returned again drops nothing more, and it can be counted
    assert validate_dataset_dicts(out, "fuzz", filter_empty=filter_empty, masks=masks) is out
    stats = count_dataset_dicts(out, 2, "fuzz")
    assert stats.num_images == len(out)


# ------------------------------------------------------------------ LVIS results
GT = LVISGroundTruth.from_dict(
    {
        "images": [
            {
                "id": i,
                "width": 20,
                "height": 10,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
            for i in (1, 2)
        ],
        "categories": [{"id": c, "frequency": "rcf"[c - 1]} for c in (1, 2, 3)],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [1, 1, 5, 5],
                "area": 25,
                "segmentation": [[1, 1, 6, 1, 6, 6, 1, 6]],
            },
        ],
    },  # fmt: skip
    with_masks=True,
)
RLE = st.fixed_dictionaries(
    {
        "size": st.one_of(st.just([10, 20]), st.lists(NUMBERS, max_size=3)),
        "counts": st.one_of(
            st.sampled_from(["PPYo0", "200", "", "5"]), st.text(max_size=6), ANYTHING
        ),
    }
)
DETECTION = st.fixed_dictionaries(
    {
        "image_id": st.one_of(st.sampled_from([1, 2, 3]), SCALARS),
        "category_id": st.one_of(st.sampled_from([1, 2, 3, 4]), SCALARS),
        "score": st.one_of(st.floats(0, 1), NUMBERS),
    },
    optional={
        "bbox": st.one_of(st.lists(NUMBERS, min_size=4, max_size=4), ANYTHING),
        "segmentation": st.one_of(RLE, ANYTHING),
    },
)


def _rle_counts():
    import numpy as np
    import pycocotools.mask as mask_utils

    mask = np.zeros((10, 20), np.uint8, order="F")
    mask[2:6, 3:9] = 1
    return mask_utils.encode(mask)["counts"].decode()


VALID_DETECTION = st.fixed_dictionaries(
    {
        "image_id": st.sampled_from([1, 2]),
        "category_id": st.sampled_from([1, 2, 3]),
        "score": st.floats(0, 1),
        "bbox": st.lists(st.integers(0, 9), min_size=4, max_size=4),
        "segmentation": st.just({"size": [10, 20], "counts": _rle_counts()}),
    }
)
RESULTS = st.one_of(
    st.lists(VALID_DETECTION, max_size=4),
    st.lists(st.one_of(DETECTION, DETECTION, VALID_DETECTION, ANYTHING), max_size=4),
    ANYTHING,
)


def _check_detections(dets, n):
    event("accepted")
    assert isinstance(dets, LVISDetections) and len(dets) <= n
    assert ((dets.score >= 0) & (dets.score <= 1)).all()
    assert set(dets.image_id.tolist()) <= {1, 2} and set(dets.category_id.tolist()) <= {1, 2, 3}


@FUZZ
@given(results=RESULTS,
       iou_type=st.sampled_from(["bbox", "segm"]))  # fmt: skip
def test_results_validator(results, iou_type):
    try:
        dets = LVISDetections.from_results(results, iou_type, GT)
    except Exception as e:  # noqa: BLE001
        _one_line_value_error(e)
        return
    _check_detections(dets, len(results))


@FUZZ
@given(text=st.one_of(
    st.builds(json.dumps, RESULTS),
    st.text(max_size=40),
    st.builds(lambda d, cut: json.dumps(d)[:cut], st.lists(DETECTION, max_size=3),
              st.integers(0, 80)),  # cut short
))  # fmt: skip
def test_results_file_reader(text, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(text)
    try:
        dets = read_results(str(path), "bbox", GT)
    except Exception as e:  # noqa: BLE001
        _one_line_value_error(e)
        return
    _check_detections(dets, text.count("{") or 0)


# ------------------------------------------------------------------ counts files
CELL = st.one_of(
    st.integers(-3, 30).map(str),
    st.sampled_from(["", "x", "1.5", " 4", "1e3", "nan", "10000000000000"]),
)  # noqa: E501
HEADER = st.sampled_from(["category_id", "contiguous_id", "image_count", "instance_count", "name"])
VALID_MARK = "# valid\n"  # a comment line (the reader skips it)
VALID_CSV = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1, max_size=4).map(
    lambda rows: "image_count,instance_count\n" + "".join(f"{i},{i + k}\n" for i, k in rows)
)
CSV_TEXT = st.builds(
    lambda header, rows, comment: comment + "\n".join([",".join(r) for r in [header, *rows]]),
    st.one_of(
        st.just(["category_id", "image_count", "instance_count"]),
        st.just(["image_count", "instance_count"]),
        st.lists(HEADER, min_size=1, max_size=4),
    ),
    st.lists(st.lists(CELL, max_size=5), max_size=4),
    st.sampled_from(["", "# num_images: 20\n", "# num_images: x\n", "# num_images: -1\n"]),
)
COUNTS = st.one_of(
    st.lists(st.integers(0, 9), min_size=2, max_size=2), st.lists(NUMBERS, max_size=4)
)
IIF_JSON = st.fixed_dictionaries(
    {"image_counts": COUNTS, "instance_counts": COUNTS},
    optional={"num_images": NUMBERS, "class_names": ANYTHING, "fractal_dimensions": ANYTHING,
              "fractal_max_grid": NUMBERS},
)  # fmt: skip
CATEGORY = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(1, 3), SCALARS)},
    optional={"image_count": NUMBERS, "instance_count": NUMBERS, "name": SCALARS},
)
IMAGE = st.one_of(st.fixed_dictionaries({"id": st.integers(1, 3)}), ANYTHING)
COCO_ANNOTATION = st.fixed_dictionaries(
    {"image_id": st.integers(1, 4), "category_id": st.integers(1, 4)},
    optional={"iscrowd": st.sampled_from([0, 1])},
)
COCO_JSON = st.fixed_dictionaries(
    {"categories": st.lists(CATEGORY, max_size=3)},
    optional={"images": st.lists(IMAGE, max_size=3),
              "annotations": st.lists(st.one_of(COCO_ANNOTATION, ANYTHING), max_size=4)},
)  # fmt: skip
VALID_IIF_JSON = st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=1).map(
    lambda rows: {"image_counts": [i for i, _ in rows], "instance_counts": [i + k for i, k in rows]}
)
JSON_VALUE = st.one_of(
    VALID_IIF_JSON,
    IIF_JSON,
    COCO_JSON,
    st.fixed_dictionaries({"stats": ANYTHING, "weights": ANYTHING}),
    ANYTHING,
)


def _load(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    try:
        stats = load_counts_file(str(path))
    except Exception as e:  # noqa: BLE001
        _one_line_value_error(e)
        return None
    event("accepted")
    assert isinstance(stats, ClassStats)
    assert all(0 <= i <= n for i, n in zip(stats.image_counts, stats.instance_counts))
    return stats


@FUZZ
@given(text=st.one_of(VALID_CSV, CSV_TEXT))
def test_counts_csv(text, tmp_path):
    stats = _load(tmp_path, "c.csv", text)
    if text.startswith(VALID_MARK):  # VALID_CSV: read back as written
        rows = [tuple(map(int, line.split(","))) for line in text.splitlines()[2:]]
        assert stats is not None and list(zip(stats.image_counts, stats.instance_counts)) == rows


@FUZZ
@given(value=JSON_VALUE)
def test_counts_json(value, tmp_path):
    stats = _load(tmp_path, "s.json", json.dumps(value))  # NaN and Infinity as json.dumps writes
    if isinstance(value, dict) and set(value) == {"image_counts", "instance_counts"}:
        if stats is not None:  # accepted: exactly what was written
            assert stats.image_counts == value["image_counts"]
            assert stats.instance_counts == value["instance_counts"]


def test_the_cap_holds():
    """The cap is real: allocating past it fails (so the properties above ran under it)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no address-space cap off Linux")
    with pytest.raises(MemoryError):
        bytearray(HEADROOM + 1024**3)
    io.BytesIO(bytes(1024**2))  # small allocations still work
