"""IIFCheckpointer and iif_d2.utils.safe_load: loading never runs code, atomic saves, resuming
past corrupt checkpoints, shape mismatches, and a checkpoint written by detectron2's own trainer."""

import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn

from iif_d2.engine.checkpoint import (
    CheckpointLocationError,
    CheckpointShapeMismatchError,
    IIFCheckpointer,
    UntrainedWeightsError,
)
from iif_d2.utils.rng import rng_preserved, rng_state, set_rng_state
from iif_d2.utils.safe_load import UnsafeCheckpointError, safe_load_pkl, safe_torch_load


class TinyDetector(nn.Module):
    """A backbone conv and a box predictor named as detectron2's (roi_heads.box_predictor)."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.roi_heads = nn.Module()
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(8, num_classes + 1)
        self.roi_heads.box_predictor.bbox_pred = nn.Linear(8, 4 * num_classes)

    def forward(self, batched_inputs):  # detectron2's contract: a dict of losses in training
        x = torch.stack([b["image"] for b in batched_inputs])
        return {
            "loss": self.conv(x).square().mean() + self.roi_heads.box_predictor.cls_score.bias.sum()
        }


def _same(model_a, model_b):
    a, b = model_a.state_dict(), model_b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class MkdirPayload:
    """Unpickling it calls os.mkdir(path): code execution, made visible."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


class EvalPayload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (eval, (f"__import__('os').mkdir({self.path!r})",))


# -- loading never runs code -------------------------------------------------------------------


@pytest.mark.parametrize("payload", [MkdirPayload, EvalPayload])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pkl_is_refused(tmp_path, payload, protocol):
    sentinel = tmp_path / "sentinel"
    weights = {"conv.weight": np.zeros((4, 3, 3, 3), np.float32)}
    data = {"model": weights, "__author__": "someone", "x": payload(sentinel)}
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError) as e:
        IIFCheckpointer(TinyDetector()).load(str(path))
    assert str(path) in str(e.value)
    assert ("mkdir" in str(e.value)) or ("builtins.eval" in str(e.value))
    assert not sentinel.exists()
    pickle.loads(path.read_bytes())  # the payload is live: plain pickle runs it
    assert sentinel.exists()


# hand-written pickles (protocol 0/3 opcodes): each asks for gigabytes with a few bytes, or
# calls a codec; the safe unpickler refuses them before anything is allocated
ALLOCATING_PKLS = {
    "bytes(20e9)": b"c__builtin__\nbytes\n(I20000000000\ntR.",
    "bytearray(20e9)": b"c__builtin__\nbytearray\n(I20000000000\ntR.",
    "ndarray(shape)": b"cnumpy\nndarray\n((I10000000000\nttR.",
    "_reconstruct(shape)": (
        b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I10000000000\ntC\x01btR."
    ),
    "dtype(V2e9)": b"cnumpy\ndtype\n(VV2000000000\ntR.",
    "list(...)": b"c__builtin__\nlist\n((I1\nttR.",
    "codec": b"c_codecs\nencode\n(Vx\nVzlib_codec\ntR.",
}


@pytest.mark.parametrize("name", sorted(ALLOCATING_PKLS))
def test_pkl_asking_for_memory_or_a_codec_is_refused(tmp_path, name):
    path = tmp_path / "small.pkl"
    path.write_bytes(ALLOCATING_PKLS[name])
    assert path.stat().st_size < 80
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_load_pkl(str(path))
    assert str(path) in str(e.value)


def test_pkl_of_arrays_scalars_and_sets_still_loads(tmp_path):
    """Everything numpy and Python write into a weights .pkl, in every protocol."""
    from collections import OrderedDict

    data = OrderedDict(
        w=np.arange(6, dtype=np.float32).reshape(2, 3),
        i=np.array([1, 2], dtype=">i8"),
        s=np.float64(2.5),
        names=np.array(["a", "bc"]),
        empty=b"",
        raw=bytearray(b"xy"),
        tags={"a", "b"},
        frozen=frozenset([1]),
        text="model",
    )
    for protocol in range(6):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        got = safe_load_pkl(str(path))
        assert list(got) == list(data)
        for k, v in data.items():
            assert np.array_equal(got[k], v) if isinstance(v, np.ndarray) else got[k] == v
            assert type(got[k]) is type(v)


def test_malicious_pth_is_refused(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "model_final.pth"
    torch.save({"model": TinyDetector().state_dict(), "x": MkdirPayload(sentinel)}, path)
    with pytest.raises(UnsafeCheckpointError, match="mkdir") as e:
        IIFCheckpointer(TinyDetector()).load(str(path))
    assert str(path) in str(e.value) and "convert" in str(e.value)
    # on resume too: refused, not skipped as corrupt
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(UnsafeCheckpointError):
        IIFCheckpointer(TinyDetector(), str(tmp_path)).resume_or_load("", resume=True)
    assert not sentinel.exists()


def test_numpy_arrays_in_pth_load_in_scope_only(tmp_path):
    source = TinyDetector()
    path = tmp_path / "converted.pth"
    torch.save({"model": {k: v.numpy() for k, v in source.state_dict().items()}}, path)
    model = TinyDetector()
    IIFCheckpointer(model).load(str(path))
    assert _same(model, source)
    with pytest.raises(pickle.UnpicklingError):  # the numpy allowance did not leak out
        torch.load(path, weights_only=True)


def test_torch_without_weights_only_fails_closed(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    torch.save({"model": TinyDetector().state_dict()}, path)
    calls = []

    def old_torch_load(f, map_location=None):  # torch < 1.13's signature
        calls.append(f)

    monkeypatch.setattr(torch, "load", old_torch_load)
    with pytest.raises(RuntimeError, match="weights_only"):
        IIFCheckpointer(TinyDetector()).load(str(path))
    (tmp_path / "last_checkpoint").write_text("model.pth")
    with pytest.raises(RuntimeError, match="weights_only"):  # not skipped as corrupt
        IIFCheckpointer(TinyDetector(), str(tmp_path)).resume_or_load("", resume=True)
    assert calls == []


def _c2_blobs(backbone):
    """A few of ``backbone``'s tensors under Detectron (Caffe2) names, as numpy arrays."""
    sd = backbone.state_dict()
    names = {
        "conv1_w": "stem.conv1.weight",
        "res_conv1_bn_s": "stem.conv1.norm.weight",
        "res_conv1_bn_b": "stem.conv1.norm.bias",
        "res2_0_branch2a_w": "res2.0.conv1.weight",
        "res3_0_branch1_w": "res3.0.shortcut.weight",
    }
    blobs = {c2: sd[d2].numpy() * 0 + np.float32(i + 1) for i, (c2, d2) in enumerate(names.items())}
    blobs["conv1_w_momentum"] = np.ones(3, np.float32)  # optimizer state: dropped
    return blobs, names


def _resnet18():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    return model


def test_detectron_pkl_loads_into_resnet18(tmp_path):
    """A Detectron (Caffe2) .pkl: latin1, protocol 2, nested under "blobs", renamed and matched
    by detectron2's heuristics."""
    model = _resnet18()
    blobs, names = _c2_blobs(model.backbone.bottom_up)
    path = tmp_path / "R-18.pkl"
    path.write_bytes(pickle.dumps({"blobs": blobs, "__author__": "Detectron"}, protocol=2))
    IIFCheckpointer(model).load(str(path))
    sd = model.backbone.bottom_up.state_dict()
    for i, d2 in enumerate(names.values()):
        assert torch.equal(sd[d2], torch.full_like(sd[d2], i + 1)), d2


def test_detectron2_zoo_pkl_loads(tmp_path):
    source = TinyDetector()
    zoo = {k: v.numpy() for k, v in source.state_dict().items()}
    path = tmp_path / "model_final_abc.pkl"
    data = {"model": zoo, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL))
    model = TinyDetector()
    IIFCheckpointer(model).load(str(path))
    assert _same(model, source)


# -- last_checkpoint stays inside ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_last_checkpoint_outside_is_refused(tmp_path, how):
    save_dir, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    save_dir.mkdir()
    elsewhere.mkdir()
    outside = elsewhere / "model_final.pth"
    torch.save({"model": TinyDetector().state_dict()}, outside)
    name = {"absolute": str(outside), "dotdot": "../elsewhere/model_final.pth"}.get(how)
    if how == "symlink":
        (save_dir / "model_final.pth").symlink_to(outside)
        name = "model_final.pth"
    (save_dir / "last_checkpoint").write_text(name)
    checkpointer = IIFCheckpointer(TinyDetector(), str(save_dir))
    with pytest.raises(CheckpointLocationError, match="outside the checkpoint directory") as e:
        checkpointer.resume_or_load("", resume=True)
    assert "last_checkpoint" in str(e.value)
    with pytest.raises(CheckpointLocationError):
        checkpointer.has_checkpoint()


# -- atomic saves ------------------------------------------------------------------------------


class RaisesWhenSaved:
    def __reduce__(self):
        raise OSError("disk full (simulated)")


def _failing_replace(monkeypatch):
    def replace(src, dst):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("failure", ["serialization", "rename"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, failure):
    old = TinyDetector()
    checkpointer = IIFCheckpointer(old, str(tmp_path), save_to_disk=True)
    checkpointer.save("model_final", iteration=7)
    before = (tmp_path / "model_final.pth").read_bytes()

    new = TinyDetector()
    assert not _same(new, old)
    writer = IIFCheckpointer(new, str(tmp_path), save_to_disk=True)
    extra = {"bad": RaisesWhenSaved()} if failure == "serialization" else {}
    if failure == "rename":
        _failing_replace(monkeypatch)
    with pytest.raises(OSError, match="simulated"):
        writer.save("model_final", iteration=9, **extra)
    monkeypatch.undo()

    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]
    loaded = TinyDetector()
    assert IIFCheckpointer(loaded, str(tmp_path)).resume_or_load("", resume=True) == {
        "iteration": 7
    }
    assert _same(loaded, old)


def test_save_fsyncs_files_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name the fsynced files")
    monkeypatch.setattr(os, "fsync", fsync)
    IIFCheckpointer(TinyDetector(), str(tmp_path), save_to_disk=True).save("model_0000001")
    temporaries = [p for p in synced if p.endswith(".tmp")]
    assert len(temporaries) == 2  # the checkpoint and last_checkpoint, before their rename
    assert synced.count(str(tmp_path.resolve())) == 2  # the directory, after each rename
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


# -- resuming past corrupt checkpoints -----------------------------------------------------------


def _save_series(tmp_path, names):
    models = {}
    for i, name in enumerate(names):
        torch.manual_seed(i)
        models[name] = TinyDetector()
        IIFCheckpointer(models[name], str(tmp_path), save_to_disk=True).save(name, iteration=i)
    return models


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_resume_skips_truncated_newest(tmp_path, caplog):
    models = _save_series(tmp_path, ["model_0000001", "model_0000005", "model_0000003"])
    # last_checkpoint names model_0000003 (saved last); model_0000005 is newer: never used
    _truncate(tmp_path / "model_0000003.pth")
    model = TinyDetector()
    checkpointer = IIFCheckpointer(model, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="iif_d2.engine.checkpoint"):
        extra = checkpointer.resume_or_load("", resume=True)
    assert any("model_0000003.pth" in r.getMessage() for r in caplog.records)
    assert extra == {"iteration": 0}
    assert _same(model, models["model_0000001"])
    assert checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")


def test_resume_order_after_corrupt_final(tmp_path):
    models = _save_series(tmp_path, ["model_0000002", "model_0000009", "model_final"])
    (tmp_path / "model_final.pth").write_bytes(b"not a checkpoint")
    model = TinyDetector()
    assert IIFCheckpointer(model, str(tmp_path)).resume_or_load("")["iteration"] == 1
    assert _same(model, models["model_0000009"])


def test_all_corrupt_starts_from_weights(tmp_path, caplog):
    _save_series(tmp_path, ["model_0000001", "model_final"])
    for name in ("model_0000001.pth", "model_final.pth"):
        _truncate(tmp_path / name)
    weights = TinyDetector()
    weights_file = tmp_path / "init" / "weights.pth"
    weights_file.parent.mkdir()
    torch.save(weights.state_dict(), weights_file)
    model = TinyDetector()
    checkpointer = IIFCheckpointer(model, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="iif_d2.engine.checkpoint"):
        assert checkpointer.resume_or_load(str(weights_file), resume=True) == {}
    assert any("starting from" in r.getMessage() for r in caplog.records)
    assert _same(model, weights)
    assert not checkpointer.has_checkpoint()


# -- shape mismatches ----------------------------------------------------------------------------


def test_class_count_mismatch_is_an_error(tmp_path):
    path = tmp_path / "coco.pth"
    source = TinyDetector(num_classes=6)
    torch.save({"model": source.state_dict()}, path)
    model = TinyDetector(num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointShapeMismatchError) as e:
        IIFCheckpointer(model).load(str(path))
    message = str(e.value)
    assert "roi_heads.box_predictor.cls_score.weight: checkpoint (7, 8), model (5, 8)" in message
    assert "roi_heads.box_predictor.bbox_pred.bias: checkpoint (24,), model (16,)" in message
    assert "allow_class_mismatch=True" in message and str(path) in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched

    IIFCheckpointer(model, allow_class_mismatch=True).load(str(path))
    assert torch.equal(model.conv.weight, source.conv.weight)
    cls = model.roi_heads.box_predictor.cls_score
    assert torch.equal(cls.weight, before["roi_heads.box_predictor.cls_score.weight"])


def test_class_count_mismatch_through_name_matching(tmp_path):
    zoo = {k: v.numpy() for k, v in TinyDetector(num_classes=6).state_dict().items()}
    path = tmp_path / "model_final_zoo.pkl"
    data = {"model": zoo, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(
        CheckpointShapeMismatchError, match=r"cls_score.weight: checkpoint \(7, 8\)"
    ):
        IIFCheckpointer(TinyDetector(num_classes=4)).load(str(path))
    model = TinyDetector(num_classes=4)
    IIFCheckpointer(model, allow_class_mismatch=True).load(str(path))
    assert torch.equal(model.conv.weight, torch.from_numpy(zoo["conv.weight"]))


# -- detectron2's trainer ------------------------------------------------------------------------


def _trainer_class():
    from detectron2.engine import DefaultTrainer

    class Trainer(DefaultTrainer):
        """detectron2's DefaultTrainer on TinyDetector, with the IIFCheckpointer wired in."""

        @classmethod
        def build_model(cls, cfg):
            return TinyDetector()

        @classmethod
        def build_train_loader(cls, cfg):
            def batches():
                g = torch.Generator().manual_seed(0)
                while True:
                    yield [{"image": torch.randn(3, 6, 6, generator=g)} for _ in range(2)]

            return batches()

        def build_hooks(self):
            self.checkpointer = IIFCheckpointer.from_checkpointer(self.checkpointer)
            return super().build_hooks()

        # detectron2 v0.6 leaves the optimizer out of checkpoints; iif_d2's Trainer adds it
        # under "_trainer" as main does. Do the same here, so both versions save the optimizer.
        if "state_dict" not in DefaultTrainer.__dict__:

            def state_dict(self):
                return {**super().state_dict(), "_trainer": self._trainer.state_dict()}

            def load_state_dict(self, state_dict):
                super().load_state_dict(state_dict)
                self._trainer.load_state_dict(state_dict["_trainer"])

    return Trainer


def test_detectron2_trainer_checkpoint_round_trips(tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.STEPS = (2,)
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 2
    cfg.DATASETS.TEST = ()
    Trainer = _trainer_class()
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, IIFCheckpointer)
    trainer.train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    saved = torch.load(tmp_path / "model_final.pth", weights_only=False)  # trusted: our file
    assert {"model", "trainer", "iteration"} <= saved.keys()

    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4 and resumed.iter == 3
    assert _same(resumed.model, trainer.model)
    original, loaded = trainer.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert original["state"].keys() == loaded["state"].keys() and original["state"]
    for k in original["state"]:
        assert torch.equal(
            original["state"][k]["momentum_buffer"], loaded["state"][k]["momentum_buffer"]
        )
    assert resumed.scheduler.state_dict() == trainer.scheduler.state_dict()


# -- random generators' state ---------------------------------------------------------------


def _draws():
    return (
        torch.rand(4).tolist(),
        np.random.rand(3).tolist(),
        float(np.random.randn()),
        random.random(),
        random.gauss(0, 1),
    )


def test_rng_state_round_trips_through_the_safe_loader(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.randn()  # numpy now holds a cached Gaussian, Python after gauss() too
    random.gauss(0, 1)
    path = tmp_path / "rng.pth"
    torch.save({"rng": rng_state()}, path)
    expected = _draws()
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    assert _draws() != expected
    set_rng_state(safe_torch_load(str(path))["rng"])  # weights_only: plain tensors and values
    assert _draws() == expected


def _seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def test_rng_preserved_leaves_the_generators_as_they_were():
    _seed_all(5)
    expected = _draws()
    _seed_all(5)
    with rng_preserved():
        _seed_all(0)
        _draws()
    assert _draws() == expected


# -- retention, the final checkpoint, last_checkpoint that is no name -------------------------


def _hook(folder, period, kept, max_iter, start_iter=0):
    from types import SimpleNamespace

    from iif_d2.engine.hooks import RunCheckpointer

    hook = RunCheckpointer(IIFCheckpointer(TinyDetector(), str(folder)), period, max_to_keep=kept)
    hook.trainer = SimpleNamespace(iter=start_iter, max_iter=max_iter)
    hook.before_train()
    return hook


def _periodic(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("model_0"))


def test_retention_counts_checkpoints_written_before_a_resume(tmp_path):
    """Three kept: the run's own and the earlier run's files count alike; the last iteration
    writes model_final.pth only (no model_0000009.pth of the same weights)."""
    first = _hook(tmp_path, period=1, kept=3, max_iter=10)
    for it in range(5):  # killed after iteration 4
        first.step(it)
    assert _periodic(tmp_path) == ["model_0000002.pth", "model_0000003.pth", "model_0000004.pth"]
    # an earlier run that kept everything left older files too
    for it in (0, 1):
        torch.save({"model": {}}, tmp_path / f"model_{it:07d}.pth")
    resumed = _hook(tmp_path, period=1, kept=3, max_iter=10, start_iter=5)
    assert _periodic(tmp_path) == ["model_0000002.pth", "model_0000003.pth", "model_0000004.pth"]
    for it in range(5, 10):
        resumed.step(it)
    assert _periodic(tmp_path) == ["model_0000006.pth", "model_0000007.pth", "model_0000008.pth"]
    assert (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_retention_zero_keeps_all_and_period_zero_is_an_error(tmp_path):
    from iif_d2.engine.hooks import RunCheckpointer

    hook = _hook(tmp_path, period=2, kept=0, max_iter=8)
    for it in range(8):
        hook.step(it)
    assert _periodic(tmp_path) == [f"model_{i:07d}.pth" for i in (1, 3, 5)]
    with pytest.raises(ValueError, match="CHECKPOINT_PERIOD 0 must be >= 1"):
        RunCheckpointer(IIFCheckpointer(TinyDetector(), str(tmp_path)), 0)


@pytest.mark.parametrize("kind", ["fifo", "latin1", "huge", "two lines"])
def test_last_checkpoint_that_is_no_name_is_a_one_line_error(tmp_path, kind):
    """A FIFO (the read would block), bytes that are not UTF-8, a huge file: errors naming
    the file and the fix, raised at once."""
    last = tmp_path / "last_checkpoint"
    if kind == "fifo":
        os.mkfifo(last)
    elif kind == "latin1":
        last.write_bytes(b"model_\xe9.pth")
    elif kind == "huge":
        last.write_bytes(b"m" * 100_000)
    else:
        last.write_text("model_0000001.pth\nmodel_0000002.pth")
    checkpointer = IIFCheckpointer(TinyDetector(), str(tmp_path))
    with pytest.raises(CheckpointLocationError) as e:
        checkpointer.resume_or_load("", resume=True)
    assert str(last) in str(e.value) and "\n" not in str(e.value) and "Delete" in str(e.value)


def test_untrained_parameters_after_load(tmp_path):
    model = TinyDetector()
    state = model.state_dict()
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("conv.")}}, tmp_path / "a")
    checkpointer = IIFCheckpointer(TinyDetector())
    assert checkpointer.untrained_parameters() == [n for n, _ in model.named_parameters()]
    checkpointer.load(str(tmp_path / "a"))
    assert checkpointer.untrained_parameters() == [
        n for n, _ in model.named_parameters() if not n.startswith("conv.")
    ]
    torch.save({"model": state}, tmp_path / "b")
    checkpointer.load(str(tmp_path / "b"))
    assert checkpointer.untrained_parameters() == []


@pytest.mark.parametrize("allow", [False, True])
def test_resuming_another_models_checkpoint_is_refused_with_the_fix(tmp_path, allow):
    """A run folder of a 4-class model resumed by a 6-class one: the optimizer's state could
    not continue it (with the shape mismatch allowed, the optimizer step would crash), so the
    error says to start a new run from the checkpoint, which then works."""
    source = TinyDetector(num_classes=4)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    source({"image": torch.zeros(3, 5, 5)} for _ in range(1))["loss"].backward()
    optimizer.step()
    IIFCheckpointer(source, str(tmp_path), optimizer=optimizer).save("model_0000009", iteration=9)
    model = TinyDetector(num_classes=6)
    other = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = IIFCheckpointer(
        model, str(tmp_path), allow_class_mismatch=allow, optimizer=other
    )
    with pytest.raises(CheckpointShapeMismatchError, match="cannot continue this run") as e:
        checkpointer.resume_or_load("", resume=True)
    assert "another OUTPUT_DIR, without --resume" in str(e.value)
    if allow:  # the advice: a new run from the checkpoint, model only
        checkpointer.load(str(tmp_path / "model_0000009.pth"), checkpointables=[])
        assert torch.equal(model.conv.weight, source.conv.weight)


# -- files that are not checkpoints: one line naming what they are ----------------------------


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "the file is empty (0 bytes)"),
        (b"this is not a checkpoint\n", "it is a text file (it starts with 'this is not a"),
        (pickle.dumps({"model": {}}, protocol=4), "it is a plain Python pickle, not written by"),
        (b"PK\x03\x04" + bytes(40), "it is a zip file torch cannot read"),
    ],
)
def test_not_a_checkpoint_is_named(tmp_path, content, what):
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(pickle.UnpicklingError) as e:
        safe_torch_load(str(path))
    assert str(e.value).startswith(f"{path} is not a torch checkpoint: {what}")


def test_integer_weights_and_a_link_to_nothing_are_refused(tmp_path):
    from iif_d2.engine.checkpoint import CheckpointReadError

    model = TinyDetector()
    state = {k: v.int() for k, v in model.state_dict().items()}
    torch.save({"model": state}, tmp_path / "int.pth")
    with pytest.raises(CheckpointReadError, match=r"'conv.weight' holds integers \(torch.int32\)"):
        IIFCheckpointer(model, str(tmp_path / "out")).load(str(tmp_path / "int.pth"))
    os.symlink(tmp_path / "l1", tmp_path / "l2")
    os.symlink(tmp_path / "l2", tmp_path / "l1")
    with pytest.raises(CheckpointReadError, match="is a symbolic link to nothing"):
        IIFCheckpointer(model, str(tmp_path / "out")).load(str(tmp_path / "l1"))


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),  # Python's write: no file name
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1856960"),
    ],
)
def test_a_failed_write_names_the_file(tmp_path, monkeypatch, failure):
    """A full disk while a checkpoint is saved: one line naming the file (torch's zip writer
    says only 'unexpected pos'); the previous checkpoint and no temporary file remain."""
    from iif_d2.utils.io import WriteError

    def save(*args, **kwargs):
        raise failure

    checkpointer = IIFCheckpointer(TinyDetector(), str(tmp_path), save_to_disk=True)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(WriteError) as e:
        checkpointer.save("model_final", iteration=1)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'model_final.pth'}: ")
    assert os.listdir(tmp_path) == []


def test_load_trained_refuses_partial_weights_in_one_line_and_logs_listings_only_of_a_trained_model(
    tmp_path, caplog
):
    """load_trained: a file covering only some parameters is an error of one line, without
    detectron2's many-line listing of the missing keys before it; a trained model's file with
    extra keys loads, and that listing (of the unused keys) is logged."""
    model = TinyDetector()
    state = model.state_dict()
    torch.save({"model": {k: v for k, v in state.items() if k.startswith("conv.")}}, tmp_path / "a")
    checkpointer = IIFCheckpointer(TinyDetector())
    with caplog.at_level(logging.INFO), pytest.raises(UntrainedWeightsError) as e:
        checkpointer.load_trained(str(tmp_path / "a"))
    assert "\n" not in str(e.value) and "holds no weights for" in str(e.value)
    assert not [r for r in caplog.records if "not found in checkpoint" in r.getMessage()]
    caplog.clear()
    torch.save({"model": {**state, "extra.weight": torch.zeros(2)}}, tmp_path / "b")
    with caplog.at_level(logging.INFO):
        checkpointer.load_trained(str(tmp_path / "b"))
    assert checkpointer.untrained_parameters() == []
    assert [r for r in caplog.records if "extra.weight" in r.getMessage()]
