"""FASA: class statistics, rates, affinity propagation, sampling, state, two-process sync, and
the held-out slice / loss / hook on a real tiny model."""

import os
import socket
import types

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage
from torch.testing import assert_close

from iif_d2 import add_iif_config, resolve_training_set
from iif_d2.data.heldout import HeldoutDatasetMapper, build_heldout_loader, split_heldout
from iif_d2.engine.hooks import FASAHook, heldout_class_losses
from iif_d2.engine.launch import close_process_groups
from iif_d2.modeling.clustering import affinity_propagation, negative_squared_distances
from iif_d2.modeling.fasa import (
    FASA,
    adapt_rates,
    class_moments,
    heldout_loss_terms,
    initial_rates,
    moments_to_mean_var,
)

NAN = float("nan")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quick_schedules")


def exact(a, b):
    assert_close(a, b, rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------- pure maths


def test_class_moments_and_mean_var():
    x = torch.tensor([[1.0, 2], [3, 6], [5, 5], [7, 7], [8, 8]])
    count, s, sq = class_moments(x, torch.tensor([0, 0, 1, 3, -1]), 3)  # 3 = background
    exact(count, torch.tensor([2, 1, 0]))
    exact(s, torch.tensor([[4.0, 8], [5, 5], [0, 0]], dtype=torch.float64))
    exact(sq, torch.tensor([[10.0, 40], [25, 25], [0, 0]], dtype=torch.float64))
    mean, var = moments_to_mean_var(count, s, sq)
    exact(mean, torch.tensor([[2.0, 4], [5, 5], [NAN, NAN]], dtype=torch.float64))
    exact(var, torch.tensor([[2.0, 8], [NAN, NAN], [NAN, NAN]], dtype=torch.float64))


def test_ema_of_mean_and_unbiased_variance():
    fasa = FASA(3, 2, [1, 2, 4], momentum=0.25)
    # 1: class 0 twice (mean [2,4], var [2,8]), class 1 once (var 0 at first sight), rest ignored
    fasa.update(torch.tensor([[1.0, 2], [3, 6], [5, 5], [7, 7]]), torch.tensor([0, 0, 1, 3]))
    exact(fasa.mean, torch.tensor([[2.0, 4], [5, 5], [0, 0]]))
    exact(fasa.var, torch.tensor([[2.0, 8], [0, 0], [0, 0]]))
    exact(fasa.seen, torch.tensor([True, True, False]))
    # 2: class 0 batch mean [2,0] var [4,0]; class 1 batch mean [2,2] var [2,2]
    x = torch.tensor([[0.0, 0], [2, 0], [4, 0], [1, 1], [3, 3]])
    fasa.update(x.half(), torch.tensor([0, 0, 0, 1, 1]))  # fp16 as under AMP
    exact(fasa.mean, torch.tensor([[2.0, 3], [4.25, 4.25], [0, 0]]))  # 0.75 old + 0.25 new
    exact(fasa.var, torch.tensor([[2.5, 6], [0.5, 0.5], [0, 0]]))
    # 3: class 1 once: its mean moves, its variance stays; class 0 absent; class 2 never seen
    fasa.update(torch.tensor([[9.0, 1]]), torch.tensor([1]))
    exact(fasa.mean, torch.tensor([[2.0, 3], [5.4375, 3.4375], [0, 0]]))
    exact(fasa.var, torch.tensor([[2.5, 6], [0.5, 0.5], [0, 0]]))
    exact(fasa.seen, torch.tensor([True, True, False]))
    fasa.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))  # empty batch: no change
    exact(fasa.mean[1], torch.tensor([5.4375, 3.4375]))


def test_initial_rates_are_normalised_inverse_counts():
    exact(initial_rates([1, 2, 4, 0]), torch.tensor([4 / 7, 2 / 7, 1 / 7, 0], dtype=torch.float64))
    fasa = FASA(3, 1, [10, 10, 20])
    exact(fasa.rates, torch.tensor([0.4, 0.4, 0.2]))
    with pytest.raises(ValueError, match="not all 0"):
        initial_rates([0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        initial_rates([3, -1])


def test_adapt_rates_up_down_clamp():
    rates = torch.tensor([0.5, 0.5, 0.5, 0.2, 0.95, 0.3, 0.4])
    clusters = torch.tensor([7, 7, 7, 1, 2, 3, 4])
    prev = torch.tensor([2.0, 0.5, 100.0, 2.0, 2.0, 1.0, 1.5])
    # cluster 7: measured classes 0, 1 sum 3.0 > 2.5 (class 2, unmeasured now, is not summed
    # but is scaled with its cluster) -> x0.9; cluster 1 down -> x1.1; cluster 2 down, clamped
    # at 1; cluster 3 unmeasured now, cluster 4 unchanged loss -> rates unchanged
    now = torch.tensor([1.0, 2.0, NAN, 1.0, 1.0, NAN, 1.5])
    got = adapt_rates(rates, now, prev, clusters, 0.1)
    want = torch.tensor([0.45, 0.45, 0.45, 0.22, 1.0, 0.3, 0.4], dtype=torch.float64)
    assert_close(got, want, rtol=1e-7, atol=0)
    exact(adapt_rates(rates, now, torch.full((7,), NAN), clusters, 0.1), rates.double())


def _blobs():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0], [10, 0], [0, 10]])
    return torch.cat([torch.randn(5, 2, generator=g) * 0.3 + c for c in centres])


def test_affinity_propagation_separated_blobs():
    labels = affinity_propagation(negative_squared_distances(_blobs()))
    exact(labels, torch.arange(3).repeat_interleave(5))
    exact(affinity_propagation(negative_squared_distances(_blobs())), labels)  # deterministic
    s = torch.full((3, 3), -1.0)
    exact(affinity_propagation(s, preference=0.0), torch.arange(3))  # all alike: singletons
    exact(affinity_propagation(s, preference=-2.0), torch.zeros(3, dtype=torch.long))
    exact(affinity_propagation(torch.zeros(1, 1)), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="damping"):
        affinity_propagation(s, damping=0.2)


@pytest.mark.parametrize(
    "seed, damping, preference", [(3, 0.5, None), (4, 0.9, None), (5, 0.7, -50.0)]
)
def test_affinity_propagation_matches_sklearn(seed, damping, preference):
    cluster = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, 8, generator=g) * 4
    x = centres[torch.arange(40) % 6] + torch.randn(40, 8, generator=g)
    ref = cluster.AffinityPropagation(damping=damping, preference=preference, random_state=0)
    ref = ref.fit(x.double().numpy()).labels_
    got = affinity_propagation(negative_squared_distances(x), damping, preference=preference)
    # same tie-breaking noise, same numbering of the clusters: the labels themselves are equal
    assert got.tolist() == ref.tolist()


# --------------------------------------------------------------------------- the module


def test_sample_only_seen_classes_and_rates():
    fasa = FASA(4, 3, [1, 1, 1, 1])
    fasa.update(torch.randn(6, 3), torch.tensor([0, 0, 2, 2, 2, 4]))
    fasa.rates.fill_(1.0)
    feats, labels = fasa.sample()
    exact(labels, torch.tensor([0, 2]))
    assert feats.shape == (2, 3) and feats.dtype == torch.float32
    fasa.rates.fill_(0.0)
    feats, labels = fasa.sample()
    assert feats.shape == (0, 3) and labels.shape == (0,) and labels.dtype == torch.long
    fresh = FASA(4, 3, [1, 1, 1, 1])
    assert fresh.sample()[1].numel() == 0  # nothing seen yet


def test_sample_counts_follow_rates():
    fasa = FASA(4, 2, [1, 1, 1, 1])
    fasa.update(torch.randn(8, 2), torch.arange(4).repeat(2))
    fasa.rates.copy_(torch.tensor([0.1, 0.5, 0.9, 0.3]))
    draws = 4000
    hits = torch.zeros(4)
    for _ in range(draws):
        hits += torch.bincount(fasa.sample()[1], minlength=4)
    # per draw: sum of rates 1.8, sd sqrt(sum r(1-r)) = 0.8 -> standard error 0.013
    assert abs(hits.sum().item() / draws - 1.8) < 0.06
    assert_close(hits / draws, fasa.rates, rtol=0, atol=0.035)


def test_sample_follows_mean_and_variance():
    c = 2000  # many classes with the same statistics: one sample() gives 2000 draws
    fasa = FASA(c, 2, [1] * c)
    x = torch.tensor([[3.0, -1.5], [-1.0, -2.5]])  # mean [1, -2], unbiased var [8, 0.5]
    fasa.update(x.repeat(c, 1), torch.arange(c).repeat_interleave(2))
    fasa.rates.fill_(1.0)
    feats = torch.cat([fasa.sample()[0] for _ in range(10)])
    assert feats.shape == (20000, 2)
    assert_close(feats.mean(0), torch.tensor([1.0, -2.0]), rtol=0, atol=0.1)
    assert_close(feats.var(0), torch.tensor([8.0, 0.5]), rtol=0.05, atol=0)


def _trained_fasa(clustering="affinity_propagation"):
    fasa = FASA(5, 2, [1, 2, 3, 4, 5], clustering=clustering)
    blobs = _blobs()[[0, 1, 2, 5, 6, 7]]  # classes 0-2 near (0,0), 3 near (10,0), class 4 unseen
    fasa.update(blobs, torch.tensor([0, 1, 2, 3, 3, 3]))
    return fasa


def test_adapt_clusters_and_state():
    fasa = _trained_fasa()
    exact(fasa.clusters(), torch.tensor([0, 0, 0, 1, 2]))
    start = fasa.rates.clone()
    exact(fasa.adapt(torch.tensor([1.0, 1, 1, 1, 1])), start)  # first call only stores
    exact(fasa.prev_loss, torch.tensor([1.0, 1, 1, 1, 1]))
    # cluster {0,1,2}: 0.5 + 2.0 + NaN = 2.5 > 2.0 -> x0.9; class 3 down -> x1.1; class 4 up
    # on its own (unseen: own cluster) -> x0.9
    rates = fasa.adapt(torch.tensor([0.5, 2.0, NAN, 0.5, 3.0]))
    assert_close(rates, start * torch.tensor([0.9, 0.9, 0.9, 1.1, 0.9]))
    exact(fasa.rates, rates)
    assert int(fasa.num_adaptations) == 2
    exact(fasa.prev_loss, torch.tensor([0.5, 2.0, NAN, 0.5, 3.0]))
    # "none": each class on its own
    alone = _trained_fasa("none")
    alone.adapt(torch.ones(5))
    rates = alone.adapt(torch.tensor([0.5, 2.0, NAN, 0.5, 3.0]))
    assert_close(rates, alone.rates.new_tensor([1.1, 0.9, 1.0, 1.1, 0.9]) * start)


def test_state_dict_round_trip_resumes_exactly():
    fasa = _trained_fasa()
    fasa.adapt(torch.ones(5))
    fasa.adapt(torch.tensor([0.5, 2.0, NAN, 0.5, 3.0]))
    state = fasa.state_dict()
    assert set(state) == {"mean", "var", "seen", "rates", "prev_loss", "num_adaptations"}
    fresh = FASA(5, 2, [5, 4, 3, 2, 1])
    fresh.load_state_dict(state)
    for name, buf in fasa.named_buffers():
        exact(dict(fresh.named_buffers())[name], buf)
    torch.manual_seed(7)
    a = fasa.sample()
    torch.manual_seed(7)
    b = fresh.sample()
    exact(a[0], b[0])
    exact(a[1], b[1])
    assert "clustering='affinity_propagation'" in repr(fresh)
    late = FASA(5, 2, [1] * 5, start_iter=100)
    assert not late.active(99) and late.active(100)
    unresolved = FASA(5, 2, [1] * 5, start_iter=-1)  # one epoch: the trainer resolves it
    with pytest.raises(RuntimeError, match="START_ITER is -1"):
        unresolved.active(0)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"momentum": 1.5}, "MOMENTUM 1.5 must lie in \\(0, 1\\]"),
        ({"loss_weight": -1.0}, "LOSS_WEIGHT"),
        ({"adapt_step": 1.0}, "ADAPT_STEP 1.0 must lie in \\[0, 1\\)"),
        ({"start_iter": -2}, "START_ITER -2"),
        ({"clustering": "kmeans"}, "CLUSTERING 'kmeans' is not one of"),
        ({"instance_counts": [1, 2]}, "2 instance counts for 3 classes"),
    ],
)
def test_validation_names_the_key(kwargs, key):
    args = {"num_classes": 3, "feature_dim": 2, "instance_counts": [1, 2, 3], **kwargs}
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.FASA") as e:
        FASA(**args)
    assert e.match(key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_update_and_sample():
    fasa = FASA(3, 2, [1, 2, 4], momentum=0.25).cuda()
    fasa.update(torch.tensor([[1.0, 2], [3, 6], [5, 5]], device="cuda"), torch.tensor([0, 0, 1]))
    exact(fasa.mean.cpu(), torch.tensor([[2.0, 4], [5, 5], [0, 0]]))
    exact(fasa.var.cpu(), torch.tensor([[2.0, 8], [0, 0], [0, 0]]))
    fasa.rates.fill_(1.0)
    feats, labels = fasa.sample()
    assert feats.is_cuda and labels.tolist() == [0, 1]
    assert fasa.adapt(torch.ones(3)).shape == (3,)


# --------------------------------------------------------------------------- two processes


def _dist_batches():
    g = torch.Generator().manual_seed(1)
    batches = []
    for n in (12, 8, 6):
        batches.append((torch.randn(n, 4, generator=g), torch.randint(-1, 6, (n,), generator=g)))
    # class 2 once on each rank (n = 1 per rank, 2 in all); class 4 only on rank 1
    batches.append((torch.randn(4, 4, generator=g), torch.tensor([2, 0, 2, 4])))
    # nothing on rank 0 (background, ignored): it still takes part in the collectives
    batches.append((torch.randn(4, 4, generator=g), torch.tensor([5, -1, 1, 3])))
    return batches


def _dist_worker(rank, world, port, out):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        fasa = FASA(5, 4, [5, 4, 3, 2, 1], momentum=0.3)
        for x, y in _dist_batches():
            half = len(y) // 2
            part = slice(0, half) if rank == 0 else slice(half, None)
            fasa.update(x[part], y[part])
        fasa.adapt(torch.ones(5))
        fasa.adapt(torch.tensor([2.0, 0.5, 1.0, NAN, 1.0]))
        torch.save(fasa.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        close_process_groups()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_statistics_equal_single_process(tmp_path):
    mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    single = FASA(5, 4, [5, 4, 3, 2, 1], momentum=0.3)
    for x, y in _dist_batches():
        single.update(x, y)
    single.adapt(torch.ones(5))
    single.adapt(torch.tensor([2.0, 0.5, 1.0, NAN, 1.0]))
    for name in ranks[0]:
        exact(ranks[0][name], ranks[1][name])  # bitwise identical on every rank
        assert_close(ranks[0][name], single.state_dict()[name], equal_nan=True)
    assert bool(ranks[0]["seen"].all())


# --------------------------------------------------------------------------- held-out slice


def _dicts(n):
    dicts = [{"image_id": i, "annotations": [{"category_id": 0}]} for i in range(n)]
    dicts[1]["annotations"] = []
    dicts[3]["annotations"] = [{"category_id": 0, "iscrowd": 1}]  # crowd only: not annotated
    return dicts


def test_split_heldout_sizes_and_determinism():
    dicts = _dicts(22)  # 20 annotated images
    train, held, skipped, _ = split_heldout(dicts, 0.125, 100)  # 2.5 -> 3 (half up)
    assert len(held) == 3 and len(train) == 19 and skipped == 0
    assert split_heldout(dicts, 0.125, 100)[:2] == (train, held)  # same images on every call
    ids = [d["image_id"] for d in train]
    assert ids == sorted(ids)  # original order
    assert not {d["image_id"] for d in held} & {1, 3}
    assert sorted(ids + [d["image_id"] for d in held]) == list(range(22))
    assert len(split_heldout(dicts, 0.5, 4)[1]) == 4  # capped
    assert len(split_heldout(dicts, 0.001, 4)[1]) == 1  # at least one
    assert split_heldout(dicts, 0.0, 4)[:2] == (dicts, [])
    with pytest.raises(ValueError, match="HELDOUT.FRACTION"):
        split_heldout(dicts, 1.0, 4)


# --------------------------------------------------------------------------- held-out loss


def _model(name, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, name))
    cfg.merge_from_list(list(opts))
    return cfg, build_model(cfg)


def _val(n):
    return DatasetCatalog.get("iif_synthetic_tiny_val")[:n]


def test_heldout_mapper_keeps_ground_truth():
    cfg, _ = _model("mask_rcnn_R_18_FPN_instant.yaml")
    d = _val(1)[0]
    assert "instances" not in DatasetMapper(cfg, is_train=False)(d)  # why the mapper exists
    out = HeldoutDatasetMapper(cfg)(d)
    inst = out["instances"]
    assert len(inst) == len([a for a in d["annotations"] if not a.get("iscrowd", 0)]) > 0
    assert out["image"].shape[1:] == inst.image_size
    assert min(inst.image_size) == cfg.INPUT.MIN_SIZE_TEST
    assert not inst.has("gt_masks")


def _gt_proposals(batch):
    gt = batch[0]["instances"]
    props = Instances(gt.image_size, proposal_boxes=gt.gt_boxes, gt_boxes=gt.gt_boxes)
    props.gt_classes = gt.gt_classes
    return gt.gt_classes, props


def _reference_total(model, batches):
    """Sum over the held-out instances of detectron2's own loss_cls, with the ground-truth
    boxes as proposals (FastRCNNOutputLayers.losses: mean CE over the RoIs of an image)."""
    heads, total, counts = model.roi_heads, 0.0, torch.zeros(8)
    with torch.no_grad(), EventStorage():
        for batch in batches:
            classes, props = _gt_proposals(batch)
            feats = model.backbone(model.preprocess_image(batch).tensor)
            x = heads.box_pooler([feats[f] for f in heads.box_in_features], [props.proposal_boxes])
            preds = heads.box_predictor(heads.box_head(x))
            loss = FastRCNNOutputLayers.losses(heads.box_predictor, preds, [props])["loss_cls"]
            total += float(loss) * len(classes)
            counts.index_add_(0, classes, torch.ones(len(classes)))
    return total, counts


def _reference_stage(model, batches, stage):
    """Per-class mean CE of cascade stage ``stage``'s logits (CascadeROIHeads._run_stage)."""
    heads, sums, counts = model.roi_heads, torch.zeros(8), torch.zeros(8)
    with torch.no_grad():
        for batch in batches:
            classes, props = _gt_proposals(batch)
            feats = model.backbone(model.preprocess_image(batch).tensor)
            scores, _ = heads._run_stage([feats[f] for f in heads.box_in_features], [props], stage)
            sums.index_add_(0, classes, F.cross_entropy(scores, classes, reduction="none"))
            counts.index_add_(0, classes, torch.ones(len(classes)))
    return torch.where(counts > 0, sums / counts.clamp(min=1), NAN)


def test_heldout_class_losses_and_hook():
    cfg, model = _model("mask_rcnn_R_18_FPN_instant.yaml")
    predictor = model.roi_heads.box_predictor
    predictor.fasa = FASA(8, 64, [1] * 8)
    loader = build_heldout_loader(cfg, _val(4))
    batches = list(loader)
    model.train()
    (losses,) = heldout_class_losses(model, loader)
    assert model.training  # mode restored
    total, counts = _reference_total(model, batches)
    present = counts > 0
    exact(torch.isnan(losses), ~present)
    assert_close((losses[present] * counts[present]).sum().item(), total, rtol=1e-5, atol=1e-6)
    assert len(heldout_class_losses(model, loader, max_batches=1)) == 1

    # the hook: every 2 iterations, not after the last
    hook = FASAHook(2, lambda: build_heldout_loader(cfg, _val(4)))
    storage = EventStorage()
    hook.trainer = types.SimpleNamespace(model=model, iter=0, max_iter=6, storage=storage)
    hook.after_step()  # iteration 1: nothing
    assert int(predictor.fasa.num_adaptations) == 0
    hook.trainer.iter = 1
    hook.after_step()
    assert int(predictor.fasa.num_adaptations) == 1
    exact(predictor.fasa.prev_loss, losses)
    assert "fasa/mean_rate" in storage.latest() and "fasa/heldout_loss" in storage.latest()
    # a larger background logit raises every class's loss: every measured class goes down
    start = predictor.fasa.rates.clone()
    with torch.no_grad():
        predictor.cls_score.bias[-1] += 3.0
    hook.trainer.iter = 3
    hook.after_step()
    factor = torch.where(present, 0.9, 1.0)
    assert_close(predictor.fasa.rates, start * factor)
    hook.trainer.iter = 5  # the last iteration: no adaptation
    hook.after_step()
    assert int(predictor.fasa.num_adaptations) == 2


def test_heldout_class_losses_cascade_stages():
    cfg, model = _model(
        "cascade_mask_rcnn_R_18_FPN_instant_iif.yaml", "MODEL.ROI_BOX_HEAD.IIF.ENABLED", False
    )
    for k in (0, 2):
        model.roi_heads.box_predictor[k].fasa = FASA(8, 64, [1] * 8)
    loader = build_heldout_loader(cfg, _val(3))
    model.eval()
    losses = heldout_class_losses(model, loader)
    assert len(losses) == 2 and not model.training
    for k, got in zip((0, 2), losses, strict=True):
        assert_close(got, _reference_stage(model, list(loader), k), equal_nan=True)
    assert not torch.equal(losses[0], losses[1])


# --------------------------------------------------------------------------- authors' options


def _authors_ema(mean, var, seen, features, labels, m):
    """The released code's statistics update, class by class: a class with one feature in the
    batch blends in the variance 0 (the first sight sets mean and variance to the batch's)."""
    mean, var, seen = mean.clone().double(), var.clone().double(), seen.clone()
    for c in range(mean.shape[0]):
        x = features[labels == c].double()
        if len(x) == 0:
            continue
        batch_mean = x.mean(0)
        batch_var = x.var(0, unbiased=True) if len(x) > 1 else torch.zeros_like(batch_mean)
        w = m if seen[c] else 1.0
        mean[c] = (1 - w) * mean[c] + w * batch_mean
        var[c] = (1 - w) * var[c] + w * batch_var
        seen[c] = True
    return mean.float(), var.float(), seen


def test_single_instance_variance_authors_option():
    g = torch.Generator().manual_seed(3)
    ours = FASA(3, 4, [1, 1, 1], momentum=0.25)
    authors = FASA(3, 4, [1, 1, 1], momentum=0.25, single_instance_variance="authors")
    mean, var, seen = authors.mean.clone(), authors.var.clone(), authors.seen.clone()
    batches = [torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2, 0]), torch.tensor([1, 3])]
    for labels in batches:  # class 1 is alone in every batch
        x = torch.randn(len(labels), 4, generator=g)
        ours.update(x, labels)
        authors.update(x, labels)
        mean, var, seen = _authors_ema(mean, var, seen, x, labels, 0.25)
    assert_close(authors.mean, mean, rtol=1e-6, atol=1e-7)
    assert_close(authors.var, var, rtol=1e-6, atol=1e-7)
    exact(authors.seen, seen)
    assert (authors.var[1] == 0).all() and (ours.var[1] == 0).all()  # only ever alone
    assert not torch.equal(ours.var[0], authors.var[0])  # class 0 alone in the 2nd batch
    with pytest.raises(ValueError, match="SINGLE_INSTANCE_VARIANCE"):
        FASA(3, 4, [1, 1, 1], single_instance_variance="zero")


def test_clustering_input_authors_option_equals_sklearn_on_positive_distances():
    cluster = pytest.importorskip("sklearn.cluster")
    g = torch.Generator().manual_seed(0)
    fasa = FASA(12, 5, [1] * 12, clustering_input="authors")
    centres = torch.randn(3, 5, generator=g) * 3
    seen = torch.arange(10)  # classes 10 and 11 never seen: all-zero means
    fasa.update(centres[seen % 3] + 0.1 * torch.randn(10, 5, generator=g), seen)
    means = fasa.mean.double().numpy()
    distances = ((means[:, None, :] - means[None, :, :]) ** 2).sum(-1)
    # the released code: sklearn's affinity propagation on the squared distances themselves
    ref = cluster.AffinityPropagation(affinity="precomputed", random_state=1).fit(distances)
    assert fasa.clusters().tolist() == ref.labels_.tolist()
    ours = FASA(12, 5, [1] * 12)
    ours.mean.copy_(fasa.mean)
    ours.seen.copy_(fasa.seen)
    assert ours.clusters().tolist() != fasa.clusters().tolist()


# ------------------------------------------------ the authors' adaptation loss (ADAPTATION_LOSS)


def _authors_cums(batches, num_classes):
    """The released code's held-out aggregation: FasaIIFLoss with ``use_cums`` adds, per batch
    and label, the summed loss and the count of the sampled RoIs (background included);
    ``dynamic_sampling`` then takes ``cum_losses / cum_labels.sum()``."""
    cum_losses = torch.zeros(num_classes + 1, dtype=torch.float64)
    cum_labels = torch.zeros(num_classes + 1, dtype=torch.float64)
    for loss, label in batches:
        for u in label.unique():
            inds = torch.where(label == u)[0]
            cum_labels[int(u)] += len(inds)
            cum_losses[int(u)] += loss[inds].double().sum()
    return cum_losses / cum_labels.sum()


def _authors_update(prob, t0, t1, clusters, up=1.1, down=0.9):
    """The released ``dynamic_sampling``'s rate update, cluster by cluster (t0 = t1 when the
    stored losses sum to 0: the first round changes nothing)."""
    if t0.sum() == 0:
        t0 = t1.clone()
    prob = prob.clone()
    for g in clusters.unique():
        group = clusters == g
        delta = t1[group].sum() - t0[group].sum()
        if delta > 0:
            prob[group] = (prob[group].double() * down).clamp(0, 1).float()
        if delta < 0:
            prob[group] = (prob[group].double() * up).clamp(0, 1).float()
    return prob, t1


def _dyadic_batches(g, num_classes, rounds):
    """Per round two batches of 8 RoIs (16 in all: the divisions stay exact), losses k / 64,
    labels in [0, C] (C = background); class 2 is absent in the first round only."""
    out = []
    for r in range(rounds):
        batches = []
        for _ in range(2):
            labels = torch.randint(0, num_classes + 1, (8,), generator=g)
            if r == 0:
                labels[labels == 2] = num_classes
            else:
                labels[0] = 2
            batches.append((torch.randint(1, 200, (8,), generator=g) / 64.0, labels))
        out.append(batches)
    return out


def _terms(batches, num_classes, mode):
    return sum(heldout_loss_terms(loss, label, num_classes, mode) for loss, label in batches)


def test_heldout_loss_terms_follow_the_authors_aggregation():
    g = torch.Generator().manual_seed(5)
    (batches,) = _dyadic_batches(g, 6, 1)
    num, den = _terms(batches, 6, "authors")
    exact((num / den).float(), _authors_cums(batches, 6)[:6].float())
    exact(den, torch.full((6,), 16.0, dtype=torch.float64))
    # the default: per-class means, NaN for a class without a RoI
    num, den = _terms(batches, 6, "gt_boxes_class_mean")
    loss, label = map(torch.cat, zip(*batches, strict=True))
    for c in range(6):
        want = loss[label == c].double().mean() if (label == c).any() else NAN
        exact(torch.where(den[c] > 0, num[c] / den[c], NAN), torch.tensor(want).double())
    with pytest.raises(ValueError, match="ADAPTATION_LOSS"):
        heldout_loss_terms(loss, label, 6, "sampled")
    with pytest.raises(ValueError, match=r"\[0, 6\]"):
        heldout_loss_terms(loss, label + 1, 6, "authors")


def test_authors_adaptation_equals_the_released_update():
    g = torch.Generator().manual_seed(11)
    num_classes = 6
    fasa = FASA(num_classes, 3, [5, 1, 2, 9, 3, 4])
    centres = torch.tensor([[0.0, 0, 0], [4, 4, 4]])
    labels = torch.arange(num_classes)
    fasa.update(centres[labels % 2] + 0.1 * torch.randn(num_classes, 3, generator=g), labels)
    default = FASA(num_classes, 3, [5, 1, 2, 9, 3, 4])
    default.load_state_dict(fasa.state_dict())
    prob, t0 = fasa.rates.clone(), torch.zeros(num_classes, dtype=torch.float64)
    for batches in _dyadic_batches(g, num_classes, 3):
        num, den = _terms(batches, num_classes, "authors")
        clusters = fasa.clusters()
        assert 1 < clusters.unique().numel() < num_classes
        fasa.adapt((num / den).float())
        prob, t0 = _authors_update(
            prob, t0, _authors_cums(batches, num_classes)[:num_classes], clusters
        )
        exact(fasa.rates, prob)
        num, den = _terms(batches, num_classes, "gt_boxes_class_mean")
        default.adapt(torch.where(den > 0, num / den, NAN).float())
    assert not torch.equal(default.rates, fasa.rates)  # the two losses decide differently


def _recipe(tmp_path, *opts):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "mask_rcnn_R_18_FPN_instant_recipe.yaml"))
    cfg.merge_from_list(["OUTPUT_DIR", str(tmp_path), *opts])
    resolve_training_set(cfg)
    return cfg, build_model(cfg)


def _reference_sampled_terms(model, images, features, targets):
    """The authors' held-out pass, re-done with detectron2's training pieces: the RPN in
    training mode, the ROI sampler, the box predictor; each RoI's cross entropy of the loss
    logits, added one by one to its class (background included), over all the RoIs."""
    heads, rpn = model.roi_heads, model.proposal_generator
    with torch.no_grad(), EventStorage():
        rpn.train()
        proposals, _ = rpn(images, features, targets)
        rpn.eval()
        sampled = heads.label_and_sample_proposals(proposals, targets)
        x = heads.box_pooler(
            [features[f] for f in heads.box_in_features], [p.proposal_boxes for p in sampled]
        )
        scores, deltas = heads.box_predictor(heads.box_head(x))
        labels = torch.cat([p.gt_classes for p in sampled])
        ce = F.cross_entropy(heads.box_predictor.loss_logits(scores), labels, reduction="none")
        # exactly the RoIs, and the losses, that the training step averages into loss_cls
        loss_cls = heads.box_predictor.losses((scores, deltas), sampled)["loss_cls"]
        assert_close(ce.mean(), loss_cls, rtol=1e-6, atol=1e-7)
    cum = torch.zeros(heads.num_classes + 1, dtype=torch.float64)
    for c, loss in zip(labels.tolist(), ce.double(), strict=True):
        cum[c] += loss
    return cum[:-1], float(len(labels))


def test_authors_heldout_pass_on_sampled_rois_with_training_augmentation(tmp_path):
    sizes = ("INPUT.MIN_SIZE_TRAIN", (64, 80))
    cfg, model = _recipe(tmp_path, "MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS", "authors", *sizes)
    batches = list(build_heldout_loader(cfg, _val(3)))
    assert {min(b[0]["image"].shape[1:]) for b in batches} <= {64, 80}  # training resize
    assert all(len(b[0]["instances"]) for b in batches)
    heads, device = model.roi_heads, torch.device("cpu")
    model.eval()
    for i, batch in enumerate(batches):
        with torch.no_grad():
            images = model.preprocess_image(batch)
            features = model.backbone(images.tensor)
        targets = [x["instances"].to(device) for x in batch]
        torch.manual_seed(i)
        got = heads.heldout_loss_sums(
            features, targets, images=images, proposal_generator=model.proposal_generator
        )
        torch.manual_seed(i)
        num, den = _reference_sampled_terms(model, images, features, targets)
        exact(got[0, 0], num)
        exact(got[1, 0], torch.full_like(num, den))
        assert den == cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    assert not model.training and not model.proposal_generator.training
    with pytest.raises(ValueError, match="proposal_generator="):
        heads.heldout_loss_sums(features, targets)
    # the default's mapper keeps the test resize
    cfg, _ = _recipe(tmp_path, *sizes)
    assert min(HeldoutDatasetMapper(cfg)(_val(1)[0])["image"].shape[1:]) == cfg.INPUT.MIN_SIZE_TEST


def test_authors_heldout_pass_cascade_and_settings(tmp_path):
    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "cascade_mask_rcnn_R_18_FPN_instant_iif.yaml"))
    cfg.merge_from_list(
        ["OUTPUT_DIR", str(tmp_path), "MODEL.ROI_BOX_HEAD.FASA.ENABLED", True]
        + ["MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS", "authors"]
    )
    model = build_model(resolve_training_set(cfg))
    model.eval()
    batch = list(build_heldout_loader(cfg, _val(2)))[0]
    with torch.no_grad():
        images = model.preprocess_image(batch)
        features = model.backbone(images.tensor)
    terms = model.roi_heads.heldout_loss_sums(
        features, [x["instances"] for x in batch], images, model.proposal_generator
    )
    assert terms.shape == (2, 3, 8) and torch.isfinite(terms).all() and (terms[0] >= 0).all()
    assert (terms[1, 0] == cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE).all()
    assert (terms[1, 1:] > 0).all() and (terms[0].sum(1) > 0).all()
    # the option needs FASA, and a known value
    with pytest.raises(ValueError, match="needs MODEL.ROI_BOX_HEAD.FASA.ENABLED"):
        _model(
            "mask_rcnn_R_18_FPN_instant.yaml", "MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS", "authors"
        )
    with pytest.raises(ValueError, match="ADAPTATION_LOSS 'rois' is not one of"):
        _model("mask_rcnn_R_18_FPN_instant.yaml", "MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS", "rois")
