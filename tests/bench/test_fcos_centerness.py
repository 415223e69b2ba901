"""dev/analysis/fcos_centerness.py: FCOS scored without its centre-ness ranks as RetinaNet does."""

import argparse
import os

import pytest
import torch
from helpers import ROOT as REPO
from helpers import load_dev


@pytest.fixture(scope="module")
def tool():
    return load_dev("analysis/fcos_centerness")


def _fcos(out):
    from iif_d2.engine.trainer import Trainer, setup

    config = os.path.join(REPO, "configs", "SynthLT-Detection", "fcos_R_18_FPN.yaml")
    ns = argparse.Namespace(config_file=config, opts=["OUTPUT_DIR", str(out)], resume=False)
    torch.manual_seed(0)
    return Trainer.build_model(setup(ns)).eval()


def test_without_centerness_scores_are_the_root_of_the_class_probability(tool, tmp_path):
    model = _fcos(tmp_path)
    image = {"image": torch.rand(3, 128, 128) * 255, "height": 128, "width": 128}
    seen = {}
    head = model.head.forward

    def keep(features):  # the head's class logits (copied: FCOS's inference sigmoids in place)
        out = head(features)
        seen["logits"] = [z.clone() for z in out[0]]
        return out

    model.head.forward = keep
    with torch.no_grad():
        as_trained = model([image])[0]["instances"].scores
        probs = torch.cat([z.flatten() for z in seen["logits"]]).sigmoid()
        plain = tool.without_centerness(model)([image])[0]["instances"].scores

    def from_class_alone(scores):  # each score**2 is one point's class probability
        gap = (scores[:, None] ** 2 - probs[None]).abs().min(dim=1).values
        return bool((gap <= 1e-6 * scores**2).all())

    assert len(plain) > 0 and from_class_alone(plain)
    # with centre-ness (sigmoid < 1 at initialisation) the scores are not the class's alone
    assert not from_class_alone(as_trained)
    assert as_trained.max() < plain.max()


def test_a_config_that_is_not_fcos_is_refused(tool, tmp_path):
    config = os.path.join(REPO, "configs", "SynthLT-Detection", "retinanet_R_18_FPN.yaml")
    with pytest.raises(SystemExit, match="not an FCOS"):
        tool.main(["--config-file", config, "--output-dir", str(tmp_path)])


def test_missing_weights_are_refused(tool, tmp_path):
    config = os.path.join(REPO, "configs", "SynthLT-Detection", "fcos_R_18_FPN.yaml")
    with pytest.raises(SystemExit, match="not a file"):
        tool.main(
            ["--config-file", config, "--output-dir", str(tmp_path), "MODEL.WEIGHTS", "no.pth"]
        )
