#!/usr/bin/env python
"""Draw a trained model's predictions beside the ground truth, one PNG per image.

Each PNG holds two panels: on the left the predictions (boxes, masks, class names and scores
from detectron2's ``Visualizer``) with a score of at least --score-thresh; on the right the
ground truth of a registered dataset (--dataset), or the input image itself for a folder of
images (--input). A checkpoint and its run folder are enough: the config defaults to the
``config.yaml`` that train_net.py saved beside the checkpoint, and class counts that came from
the training set are read from the run's ``iif_class_stats.json`` instead, so the training
annotations are not needed.

    python tools/visualize.py --weights output/demo/model_final.pth --dataset synthlt_val \\
        --output output/demo/vis --num 8
    python tools/visualize.py --weights RUN/model_final.pth --config-file RUN/config.yaml \\
        --input my_images/ --output vis/ --score-thresh 0.3 [config overrides ...]
"""

import argparse
import contextlib
import os
import pickle
import sys

from iif_d2.utils.io import same_file
from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
STATS_FILENAME = "iif_class_stats.json"  # written by training into OUTPUT_DIR


def use_run_class_counts(cfg, stats_file: str) -> bool:
    """Point the config's class counts to a run's saved ``iif_class_stats.json``.

    Only counts computed from the training set (source "dataset" or "json") are replaced: they
    are the counts the run saved, and reading them needs no training annotations. Counts that
    already come from a file are kept.

    Args:
        cfg: the (unfrozen) config, changed in place.
        stats_file: the run's ``iif_class_stats.json``.

    Returns:
        whether the config now reads ``stats_file``.
    """
    if not os.path.isfile(stats_file):
        return False
    from iif_d2.config import apply_deprecated_keys

    node = apply_deprecated_keys(cfg).MODEL.CLASS_COUNTS
    if node.SOURCE not in ("dataset", "json"):
        return False
    node.SOURCE, node.FILE = "file", stats_file
    return True


def load_run_config(weights: str, config_file=None, opts=(), device=None):
    """The config to run a checkpoint with, ready for :class:`DefaultPredictor`.

    Args:
        weights: the checkpoint (``.pth``/``.pkl``).
        config_file: its config; default: ``config.yaml`` in the checkpoint's folder.
        opts: config overrides, as train_net.py takes them (``KEY VALUE ...``).
        device: ``cpu``/``cuda``; default: cuda when available.

    Returns:
        a frozen config with MODEL.WEIGHTS = ``weights`` and, where the run saved them, the
        class counts read from the run folder.

    Raises:
        FileNotFoundError: no checkpoint, or no config file.
        iif_d2.engine.trainer.RunConfigError: a config that is not plain YAML (no code runs),
            or bad overrides.
    """
    import torch

    from iif_d2.engine.trainer import load_config_file  # safe YAML, _BASE_ checked

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist; pass --weights RUN/*.pth")
    run_dir = os.path.dirname(os.path.abspath(weights))
    if config_file is None:
        config_file = os.path.join(run_dir, "config.yaml")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"no config.yaml beside {weights!r} (train_net.py writes one into OUTPUT_DIR); "
                "pass --config-file"
            )
    elif not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = load_config_file(config_file, list(opts))
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.OUTPUT_DIR = ""  # inference only: nothing is written into the run folder
    use_run_class_counts(cfg, os.path.join(run_dir, STATS_FILENAME))
    cfg.freeze()
    return cfg


def _dataset_items(name: str, num: int):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {name!r} is not registered; registered: "
            + ", ".join(sorted(DatasetCatalog.list()))
        )
    dicts = DatasetCatalog.get(name)[:num]
    return [(d["file_name"], d) for d in dicts], MetadataCatalog.get(name)


def _folder_items(folder: str, num: int, cfg):
    from detectron2.data import MetadataCatalog

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--input {folder!r} is not a folder of images")
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise FileNotFoundError(
            f"--input {folder!r} holds no image ({', '.join(IMAGE_EXTENSIONS)})"
        )
    # class names: those of the datasets the model was trained or tested on
    datasets = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    metadata = MetadataCatalog.get(datasets[0]) if datasets else None
    return [(os.path.join(folder, n), None) for n in names[:num]], metadata


def _predictor(cfg):
    """detectron2's ``DefaultPredictor`` with the weights read by iif-d2's checkpointer
    (``.pkl`` through the restricted unpickler, ``.pth`` with ``weights_only``: loading runs
    no code); a checkpoint that leaves the model's parameters untrained is an error."""
    from detectron2.engine import DefaultPredictor

    from iif_d2.engine.checkpoint import IIFCheckpointer

    bare = cfg.clone()
    bare.defrost()
    bare.MODEL.WEIGHTS = ""  # DefaultPredictor's own checkpointer loads nothing
    bare.freeze()
    predictor = DefaultPredictor(bare)
    checkpointer = IIFCheckpointer(
        predictor.model, allow_class_mismatch=cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH
    )
    checkpointer.load(cfg.MODEL.WEIGHTS, checkpointables=[])
    untrained = checkpointer.untrained_parameters()
    if untrained:
        raise ValueError(
            f"{cfg.MODEL.WEIGHTS} holds no weights for {len(untrained)} of the model's "
            f"parameters (e.g. {untrained[0]}): it is not a trained model of this config; "
            "pass the run's model_final.pth (and its config)."
        )
    predictor.cfg = cfg
    return predictor


@contextlib.contextmanager
def _fixed_colors(seed=0):
    """Visualizer draws each instance in a random colour (numpy's global RNG): make the
    colours repeatable, then restore the RNG."""
    import numpy as np

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _label(vis, text):
    """Write ``text`` at the top left of a detectron2 ``Visualizer``'s panel."""
    vis.draw_text(text, (2, 2), horizontal_alignment="left", color="white")


def visualize(cfg, output_dir, dataset=None, input_dir=None, num=8, score_thresh=0.5, scale=None):
    """Run ``cfg``'s model on ``num`` images and save prediction | ground-truth PNGs.

    Args:
        cfg: a config from :func:`load_run_config`.
        output_dir: where the PNGs go (created).
        dataset: a registered dataset (ground truth drawn on the right), or
        input_dir: a folder of images (the input image on the right).
        num: how many images (the first ones, in dataset or name order).
        score_thresh: the lowest score of a drawn prediction.
        scale: the panels' size / the image's; default: panels of at least 512 pixels.

    Returns:
        the paths of the written PNGs.
    """
    import numpy as np
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    from iif_d2.utils.io import atomic_write

    if (dataset is None) == (input_dir is None):
        raise ValueError("give exactly one of dataset and input_dir")
    if input_dir is not None and same_file(input_dir, output_dir):
        raise ValueError(
            f"--output {output_dir} is the --input folder: the PNGs would replace the input "
            "images of the same name; give another folder."
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output {output_dir} is a file; give a folder for the PNGs.")
    if dataset is not None:
        items, metadata = _dataset_items(dataset, num)
    else:
        items, metadata = _folder_items(input_dir, num, cfg)
    predictor = _predictor(cfg)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for path, record in items:
        bgr = read_image(path, format="BGR")
        rgb = bgr[:, :, ::-1]
        s = scale or max(1.0, 512 / max(rgb.shape[:2]))
        instances = predictor(bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        with _fixed_colors():
            left = Visualizer(rgb, metadata, scale=s)
            _label(left, f"prediction: {len(instances)} (score >= {score_thresh:g})")
            left = left.draw_instance_predictions(instances)
        with _fixed_colors():
            right = Visualizer(rgb, metadata, scale=s)
            if record is not None:
                _label(right, f"ground truth: {len(record.get('annotations', []))}")
                right = right.draw_dataset_dict(record)
            else:
                _label(right, "input")
                right = right.output
        panels = [v.get_image() for v in (left, right)]
        out = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0] + ".png")
        image = Image.fromarray(np.concatenate(panels, axis=1))
        atomic_write(out, lambda f, image=image: image.save(f, format="PNG"))
        written.append(out)
    return written


def _parser():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n" + __doc__.split("\n\n")[2],
    )
    p.add_argument("--weights", required=True, help="checkpoint, e.g. RUN/model_final.pth")
    p.add_argument(
        "--config-file",
        help="the checkpoint's config (default: config.yaml beside the checkpoint)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="a registered dataset, e.g. synthlt_val (ground truth)")
    src.add_argument("--input", metavar="DIR", help="a folder of images (no ground truth)")
    p.add_argument("--output", metavar="DIR", required=True, help="folder for the PNGs")
    p.add_argument("--num", type=int, default=8, help="number of images (default: 8)")
    p.add_argument(
        "--score-thresh",
        type=float,
        default=0.5,
        help="draw predictions scoring at least this (default: 0.5)",
    )
    p.add_argument(
        "--scale",
        type=float,
        help="panel size / image size (default: panels of at least 512 pixels)",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ... (as train_net.py)"
    )
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.num < 1:
        sys.exit("visualize.py: error: --num must be at least 1")
    try:
        cfg = load_run_config(args.weights, args.config_file, args.opts, args.device)
        written = visualize(
            cfg,
            args.output,
            dataset=args.dataset,
            input_dir=args.input,
            num=args.num,
            score_thresh=args.score_thresh,
            scale=args.scale,
        )
    except (AssertionError, FileNotFoundError, KeyError, ValueError, pickle.UnpicklingError) as e:
        # AssertionError: yacs's "Non-existent key" in the overrides; KeyError: a dataset that
        # is not registered
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"visualize.py: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    print(f"{len(written)} PNG(s) (prediction | ground truth) written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
