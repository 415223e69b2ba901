"""Repeat-factor sampling: closed form, detectron2's numbers, ceil/stochastic rounding, ranks,
summary, config; the resumable batches and loader (detectron2's grouping, any start, any
NUM_WORKERS, no image read for skipped batches)."""

import inspect
import itertools
import logging
import math
import random

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from iif_d2 import add_iif_config
from iif_d2.data.loader import ResumableTrainLoader
from iif_d2.data.samplers import (
    CeilRepeatFactorTrainingSampler,
    build_train_sampler,
    position_batches,
    repeat_factor_summary,
    repeat_factors,
)


def _anns(*cats, crowd=()):
    return {
        "annotations": [{"category_id": c} for c in cats]
        + [{"category_id": c, "iscrowd": 1} for c in crowd]
    }


# 10 images; class 0 in 8 of them (one only as a crowd box), class 1 in 4, class 2 in 1.
# t = 0.9: t/f = 1.125, 2.25, 9 -> with sqrt r(c) = 1.0607, 1.5, 3.
DICTS = [
    _anns(0, 0, 1),
    _anns(1, 2, crowd=(0,)),
    _anns(0),
    _anns(),
    _anns(),
    _anns(0, 1),
    _anns(1, 0),
    _anns(0),
    _anns(0, 0, 0),
    _anns(0),
]
T = 0.9
R0 = math.sqrt(1.125)
EXPECTED_SQRT = [1.5, 3.0, R0, 1.0, 1.0, 1.5, 1.5, R0, R0, R0]
EXPECTED_LINEAR = [2.25, 9.0, 1.125, 1.0, 1.0, 2.25, 2.25, 1.125, 1.125, 1.125]
CEIL_COUNTS = [2, 3, 2, 1, 1, 2, 2, 2, 2, 2]


def _long_tailed_dicts(num_images=600, num_classes=150, seed=0):
    """Random LVIS-like dicts: Zipf-distributed classes, some images without annotations."""
    rng = random.Random(seed)
    weights = [1.0 / (c + 1) for c in range(num_classes)]
    dicts = []
    for _ in range(num_images):
        n = rng.choice([0, 1, 2, 3, 5, 8])
        cats = rng.choices(range(num_classes), weights, k=n)
        dicts.append({"annotations": [{"category_id": c} for c in cats]})
    return dicts


def _cfg(**dataloader):
    cfg = add_iif_config(get_cfg())
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    cfg.DATALOADER.REPEAT_THRESHOLD = T
    cfg.SEED = 7
    for k, v in dataloader.items():
        if k == "ROUNDING":
            cfg.DATALOADER.REPEAT_FACTOR.ROUNDING = v
        else:
            cfg.DATALOADER[k] = v
    return cfg


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


# --- repeat factors ------------------------------------------------------------------------


def test_repeat_factors_closed_form_sqrt():
    r = repeat_factors(DICTS, T)
    assert r.dtype == torch.float32
    assert torch.allclose(r, torch.tensor(EXPECTED_SQRT), rtol=0, atol=1e-6)


def test_repeat_factors_closed_form_without_sqrt():
    r = repeat_factors(DICTS, T, sqrt=False)
    assert torch.allclose(r, torch.tensor(EXPECTED_LINEAR), rtol=0, atol=1e-6)


def test_images_without_annotations_get_one():
    dicts = [{"file_name": "a.jpg"}, {"annotations": []}, _anns(4)]
    assert repeat_factors(dicts, 0.9).tolist() == pytest.approx([1, 1, math.sqrt(0.9 / (1 / 3))])
    assert repeat_factors([], 0.001).shape == (0,)


def test_crowd_annotations_count_as_detectron2():
    # class 0 as a crowd box in image 1 makes it 8 of 10 images: r = sqrt(0.9 / 0.8), not 7/10
    assert repeat_factors(DICTS, T)[2].item() == pytest.approx(R0)
    assert repeat_factors(DICTS, T)[2].item() != pytest.approx(math.sqrt(0.9 / 0.7))


def test_low_threshold_is_all_ones():
    assert torch.equal(repeat_factors(DICTS, 1e-6), torch.ones(len(DICTS)))


@pytest.mark.parametrize("threshold", [0.0, -0.1])
def test_repeat_factors_rejects_nonpositive_threshold(threshold):
    with pytest.raises(ValueError, match="> 0"):
        repeat_factors(DICTS, threshold)


@pytest.mark.parametrize("threshold", [0.001, 0.01, 0.3])
@pytest.mark.parametrize("sqrt", [True, False])
def test_equal_to_detectron2(threshold, sqrt):
    upstream = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    has_sqrt = "sqrt" in inspect.signature(upstream).parameters  # main has it, v0.6 does not
    if not sqrt and not has_sqrt:
        pytest.skip("this detectron2 has no sqrt=False")
    for dicts in (DICTS, _long_tailed_dicts()):
        kwargs = {"sqrt": sqrt} if has_sqrt else {}
        expected = upstream(dicts, threshold, **kwargs)
        assert torch.equal(repeat_factors(dicts, threshold, sqrt), expected)


# --- samplers --------------------------------------------------------------------------------


def test_ceil_every_epoch_holds_each_image_ceil_r_times():
    factors = repeat_factors(DICTS, T)
    sampler = CeilRepeatFactorTrainingSampler(factors, seed=3)
    epoch = sum(CEIL_COUNTS)
    stream = _take(sampler, 50 * epoch)
    orders = set()
    for e in range(50):
        chunk = stream[e * epoch : (e + 1) * epoch]
        assert np.bincount(chunk, minlength=len(DICTS)).tolist() == CEIL_COUNTS
        orders.add(tuple(chunk))
    assert len(orders) > 40  # shuffled, differently every epoch


def test_ceil_keeps_integer_factors():
    factors = torch.tensor([1.0, 2.0, 2.5, 1.0001, 4.0])
    indices = CeilRepeatFactorTrainingSampler(factors, seed=0)._get_epoch_indices(None)
    assert np.bincount(indices.numpy()).tolist() == [1, 2, 3, 2, 4]


def test_stochastic_expected_count_is_r():
    factors = repeat_factors(DICTS, T)
    sampler = RepeatFactorTrainingSampler(factors, seed=11)
    g = torch.Generator().manual_seed(11)
    epochs = 4000
    counts = sum(
        np.bincount(sampler._get_epoch_indices(g).numpy(), minlength=len(DICTS))
        for _ in range(epochs)
    )
    np.testing.assert_allclose(counts / epochs, EXPECTED_SQRT, atol=0.04)
    # the stream: each image's share is r / sum(r)
    stream = _take(sampler, 200_000)
    share = np.bincount(stream, minlength=len(DICTS)) / len(stream)
    np.testing.assert_allclose(share, factors.numpy() / factors.sum().item(), atol=0.005)


def test_stochastic_is_detectron2s_sampler():
    sampler = build_train_sampler(_cfg(ROUNDING="stochastic"), DICTS)
    assert type(sampler) is RepeatFactorTrainingSampler
    reference = RepeatFactorTrainingSampler(
        RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(DICTS, T), seed=7
    )
    assert _take(sampler, 500) == _take(reference, 500)


@pytest.mark.parametrize("cls", [RepeatFactorTrainingSampler, CeilRepeatFactorTrainingSampler])
def test_two_ranks_shard_one_shared_stream(monkeypatch, cls):
    factors = repeat_factors(_long_tailed_dicts(), 0.01)
    full = _take(cls(factors, seed=5), 2000)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        shards.append(_take(cls(factors, seed=5), 1000))
    assert shards[0] == full[0::2] and shards[1] == full[1::2]  # disjoint positions, no gaps


def test_seed_none_uses_detectron2_shared_seed():
    factors = repeat_factors(DICTS, T)
    np.random.seed(123)
    sampler = CeilRepeatFactorTrainingSampler(factors)
    np.random.seed(123)
    assert sampler._seed == comm.shared_random_seed()
    np.random.seed(123)
    cfg = _cfg(ROUNDING="ceil")
    cfg.SEED = -1
    assert _take(build_train_sampler(cfg, DICTS), 100) == _take(sampler, 100)


# --- summary ---------------------------------------------------------------------------------


def _rows(table):
    return {
        cells[0]: cells[1:]
        for line in table.splitlines()
        if line.startswith("|") and not line.startswith("|:")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }


def test_summary_groups():
    # 300 images: class 0 in 280 (f), class 1 in 50 (c), class 2 in 5 (r), 20 without annotations
    dicts = [_anns(*[0] + [1] * (i < 50) + [2] * (i < 5)) for i in range(280)] + [_anns()] * 20
    factors = repeat_factors(dicts, 0.1)
    r2 = math.sqrt(0.1 / (5 / 300))
    assert factors[:5].tolist() == pytest.approx([r2] * 5)
    assert torch.equal(factors[5:], torch.ones(295))
    text = repeat_factor_summary(dicts, factors, 0.1, True, "ceil")
    rows = _rows(text)
    assert rows["group"] == ["#classes", "#images", "mean r(I)", "max r(I)", "images/epoch"]
    assert rows["r"] == ["1", "5", f"{r2:.2f}", f"{r2:.2f}", "15.0"]
    assert rows["c"] == ["1", "45", "1.00", "1.00", "45.0"]
    assert rows["f"] == ["1", "230", "1.00", "1.00", "230.0"]
    assert rows["no annotations"] == ["-", "20", "1.00", "1.00", "20.0"]
    assert "epoch of 300 images -> 310.0 images" in text
    stochastic = repeat_factor_summary(dicts, factors, 0.1, True, "stochastic")
    assert f"-> {295 + 5 * r2:.1f} images" in stochastic
    assert _rows(stochastic)["r"][-1] == f"{5 * r2:.1f}"


def test_summary_empty_groups():
    text = repeat_factor_summary(DICTS, repeat_factors(DICTS, T), T, False, "stochastic")
    rows = _rows(text)
    assert rows["r"][:2] == ["3", "8"] and rows["no annotations"][:2] == ["-", "2"]
    assert rows["c"] == ["0", "0", "-", "-", "0.0"]
    assert "max(1, t / f)" in text


# --- config ----------------------------------------------------------------------------------


def test_build_from_config_ceil_logs_summary_once(caplog):
    with caplog.at_level(logging.INFO, logger="iif_d2.data.samplers"):
        sampler = build_train_sampler(_cfg(ROUNDING="ceil"), DICTS)
    assert type(sampler) is CeilRepeatFactorTrainingSampler
    assert sampler._seed == 7
    assert np.bincount(_take(sampler, 19)).tolist() == CEIL_COUNTS
    logs = [r.getMessage() for r in caplog.records if r.name == "iif_d2.data.samplers"]
    assert len(logs) == 1 and "rounding 'ceil'" in logs[0] and "-> 19.0 images" in logs[0]


def test_build_from_config_without_sqrt():
    sampler = build_train_sampler(_cfg(REPEAT_SQRT=False, ROUNDING="ceil"), DICTS)
    expected = [math.ceil(r) for r in EXPECTED_LINEAR]
    counts = np.bincount(_take(sampler, 10 * sum(expected))) / 10
    assert counts.tolist() == expected


def test_build_training_sampler_and_others():
    cfg = _cfg()
    cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
    sampler = build_train_sampler(cfg, DICTS)
    assert type(sampler) is TrainingSampler and sampler._size == len(DICTS)
    assert _take(sampler, 30) == _take(TrainingSampler(len(DICTS), seed=7), 30)
    cfg.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
    assert build_train_sampler(cfg, DICTS) is None


def test_bad_rounding():
    with pytest.raises(ValueError) as e:
        build_train_sampler(_cfg(ROUNDING="floor"), DICTS)
    msg = str(e.value)
    assert "DATALOADER.REPEAT_FACTOR.ROUNDING" in msg and "'floor'" in msg
    assert "'stochastic'" in msg and "'ceil'" in msg


@pytest.mark.parametrize("threshold", [0.0, -0.001])
def test_bad_threshold(threshold):
    with pytest.raises(ValueError, match=rf"DATALOADER.REPEAT_THRESHOLD {threshold}.*> 0"):
        build_train_sampler(_cfg(REPEAT_THRESHOLD=threshold), DICTS)


def test_sampler_feeds_detectron2_loader():
    cfg = _cfg(ROUNDING="ceil")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    cfg.SOLVER.IMS_PER_BATCH = 1
    dicts = [dict(d, image_id=i) for i, d in enumerate(DICTS)]
    sampler = build_train_sampler(cfg, dicts)
    loader = build_detection_train_loader(cfg, dataset=dicts, sampler=sampler, mapper=lambda d: d)
    seen = [batch[0]["image_id"] for batch in itertools.islice(loader, 19)]
    assert np.bincount(seen).tolist() == CEIL_COUNTS


# --- resumable batches and loader ------------------------------------------------------------


def _sized_dicts(n=40, seed=3):
    """Dicts of images of three widths and heights (wide, high and square ones)."""
    rng = random.Random(seed)
    sizes = (60, 80, 100)
    return [
        {"image_id": i, "width": rng.choice(sizes), "height": rng.choice(sizes)} for i in range(n)
    ]


def _wide(dicts):
    return [d["width"] > d["height"] for d in dicts]


def test_grouped_batches_are_detectron2s():
    from detectron2.data.common import AspectRatioGroupedDataset

    dicts = _sized_dicts()
    stream = _take(TrainingSampler(len(dicts), seed=4), 400)
    upstream = AspectRatioGroupedDataset([dicts[i] for i in stream], 3)
    theirs = [[d["image_id"] for d in b] for b in itertools.islice(upstream, 100)]
    ours = position_batches(iter(stream), 3, _wide(dicts))
    ours = [[i for _, i in b] for b in itertools.islice(ours, 100)]
    assert len(ours) == 100 and ours == theirs
    assert {len({dicts[i]["width"] > dicts[i]["height"] for i in b}) for b in ours} == {1}


@pytest.mark.parametrize("grouped", [False, True])
def test_batches_from_any_start_are_the_suffix(grouped):
    dicts = _sized_dicts()
    wide = _wide(dicts) if grouped else None
    sampler = TrainingSampler(len(dicts), seed=4)
    full = list(itertools.islice(position_batches(iter(sampler), 3, wide), 50))
    for start in (1, 7, 30):
        later = position_batches(iter(sampler), 3, wide, start=start)
        assert list(itertools.islice(later, 50 - start)) == full[start:]
    stream = _take(sampler, 200)
    assert all(stream[p] == i for b in full for p, i in b)  # positions in the stream
    positions = [p for b in full for p, _ in b]
    assert positions == list(range(150)) if not grouped else len(set(positions)) == 150


def test_rank_positions_interleave_in_the_shared_stream(monkeypatch):
    full = _take(TrainingSampler(30, seed=2), 300)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    for rank in (0, 1):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        batches = position_batches(iter(TrainingSampler(30, seed=2)), 2, None, rank, 2)
        items = [item for b in itertools.islice(batches, 20) for item in b]
        assert [p for p, _ in items] == list(range(rank, 80, 2))
        assert all(full[p] == i for p, i in items)


class _DrawingMapper:
    """A mapper that, like an augmentation, draws from numpy's, Python's and torch's global
    generators; it counts its calls (in this process)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, d):
        self.calls += 1
        draws = (float(np.random.rand()), random.random(), float(torch.rand(())))
        return {"image_id": d["image_id"], "draws": draws}


def _loader(workers=0, sampler=None, grouping=True):
    dicts = _sized_dicts()
    sampler = sampler or RepeatFactorTrainingSampler(torch.linspace(1, 3, len(dicts)), seed=6)
    return ResumableTrainLoader(
        dicts,
        _DrawingMapper(),
        sampler,
        3,
        aspect_ratio_grouping=grouping,
        num_workers=workers,
    )


def test_loader_resumes_without_mapping_the_skipped_batches():
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    full = list(itertools.islice(_loader(), 10))
    after = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    assert torch.equal(before[0], after[0]) and (before[1] == after[1]).all()
    assert before[2] == after[2]  # the mapper's draws left the global generators alone
    loader = _loader()
    loader.resume(6, loader.state_dict())
    assert list(itertools.islice(loader, 4)) == full[6:]
    assert loader.mapper.calls == 4 * 3  # the first 6 batches were not mapped
    draws = [x["draws"] for b in full for x in b]
    assert len(set(draws)) == len(draws)  # every sample draws anew


def test_loader_seed_comes_from_the_checkpoint():
    saved = _loader(sampler=TrainingSampler(40, seed=11)).state_dict()
    full = list(itertools.islice(_loader(sampler=TrainingSampler(40, seed=11)), 5))
    other = _loader(sampler=TrainingSampler(40, seed=12))  # e.g. SEED -1: a new random seed
    assert list(itertools.islice(other, 5)) != full
    other.resume(2, saved)
    assert list(itertools.islice(other, 3)) == full[2:]


@pytest.mark.parametrize("grouping", [False, True])
def test_two_workers_map_what_one_process_maps(grouping):
    expected = list(itertools.islice(_loader(grouping=grouping), 8))
    assert list(itertools.islice(_loader(2, grouping=grouping), 8)) == expected
    loader = _loader(2, grouping=grouping)
    loader.resume(5)
    assert list(itertools.islice(loader, 3)) == expected[5:]


def test_grouping_needs_sizes():
    with pytest.raises(ValueError, match="needs 'width' and 'height'.*ASPECT_RATIO_GROUPING False"):
        ResumableTrainLoader([{"image_id": 0}], _DrawingMapper(), TrainingSampler(1), 1)


def test_an_unreadable_training_image_is_named(tmp_path):
    """A truncated image file, found when the loader maps it: a one-line error naming it."""
    from detectron2.config import get_cfg
    from detectron2.data import DatasetMapper
    from PIL import Image

    from iif_d2.data.validate import DatasetError

    path = tmp_path / "cut.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    dicts = [{"file_name": str(path), "image_id": 7, "height": 64, "width": 64, "annotations": []}]
    loader = ResumableTrainLoader(dicts, DatasetMapper(get_cfg(), True), TrainingSampler(1), 1)
    with pytest.raises(DatasetError, match=r"cut.png' \(image id 7\) cannot be read") as e:
        next(iter(loader))
    assert "\n" not in str(e.value)
