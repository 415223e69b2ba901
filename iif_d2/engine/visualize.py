"""Draw a trained model's predictions beside the ground truth, one PNG per image: the code
behind ``tools/visualize.py`` and the pictures of ``tools/demo.py``.

A checkpoint and its run folder are enough: :func:`load_run_config` reads the ``config.yaml``
train_net.py saved beside the checkpoint (safe YAML: no code runs) and, where the class counts
came from the training set, the run's ``iif_class_stats.json`` instead, so the training
annotations are not needed. :func:`build_predictor` loads the weights through iif-d2's safe
checkpointer; :func:`visualize` writes one prediction | ground-truth (or input) PNG per image.
"""

import contextlib
import os

from iif_d2.utils.io import same_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "STATS_FILENAME",
    "build_predictor",
    "dataset_items",
    "folder_items",
    "load_run_config",
    "output_names",
    "use_run_class_counts",
    "visualize",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
STATS_FILENAME = "iif_class_stats.json"  # written by training into OUTPUT_DIR
MAX_PANEL_PIXELS = 16384  # the longest side of a panel drawn at a given --scale


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
        iif_d2.engine.config_files.RunConfigError: a config that is not plain YAML (no code runs),
            or bad overrides.
    """
    import torch

    from iif_d2.engine.config_files import load_config_file  # safe YAML, _BASE_ checked

    if not os.path.isfile(weights):
        raise FileNotFoundError(f"checkpoint {weights!r} does not exist; pass --weights RUN/*.pth")
    run_dir = os.path.dirname(os.path.abspath(weights))
    if config_file is None:
        config_file = os.path.join(run_dir, "config.yaml")
        if os.path.exists(config_file) and not os.path.isfile(config_file):
            raise FileNotFoundError(
                f"{config_file} (beside the checkpoint) is not a regular file; pass --config-file"
            )
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


def dataset_items(name: str, num: int):
    """The first ``num`` images of the registered dataset ``name``.

    Returns:
        ([(file name, dataset dict)], the dataset's metadata).

    Raises:
        KeyError: ``name`` is not registered (the message names up to 3 close matches).
        FileNotFoundError: its annotation file or image folder does not exist (named).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from iif_d2.data.dataset_files import DatasetFilesMissing, check_dataset_files

    try:  # one line: an unregistered name with its close matches, or the missing file
        check_dataset_files([name], "--dataset")
    except DatasetFilesMissing as e:
        if name in DatasetCatalog.list():
            raise
        close = str(e).endswith("?")  # "did you mean ...?": the fix is named
        raise KeyError(
            f"{e}"
            if close
            else f"{e} Register it first (detectron2.data.DatasetCatalog.register), or draw a "
            "folder of images with --input."
        ) from None
    dicts = DatasetCatalog.get(name)[:num]
    return [(d["file_name"], d) for d in dicts], MetadataCatalog.get(name)


def folder_items(folder: str, num: int, cfg):
    """The first ``num`` images of ``folder`` (by name, extensions :data:`IMAGE_EXTENSIONS`).

    Returns:
        ([(path, None)], the metadata of ``cfg``'s first test or training dataset, for the
        class names; None without datasets).

    Raises:
        FileNotFoundError: ``folder`` is not a folder, or holds no image.
    """
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


def build_predictor(cfg):
    """detectron2's ``DefaultPredictor`` with the weights read by iif-d2's checkpointer
    (``.pkl`` through the restricted unpickler, ``.pth`` with ``weights_only``: loading runs
    no code); a checkpoint that leaves the model's parameters untrained is an error."""
    from detectron2.engine import DefaultPredictor

    from iif_d2.data.training_set import needs_class_counts
    from iif_d2.engine.checkpoint import IIFCheckpointer, UntrainedWeightsError

    source = cfg.MODEL.CLASS_COUNTS.SOURCE
    if source in ("dataset", "json") and needs_class_counts(cfg):
        raise ValueError(
            f"the config takes its class counts from the training set (MODEL.CLASS_COUNTS."
            f"SOURCE {source}), and no {STATS_FILENAME} is beside the checkpoint "
            f"{cfg.MODEL.WEIGHTS}: is it the config this checkpoint was trained with? Give the "
            "run's config.yaml with --config-file, or the counts as overrides: "
            "MODEL.CLASS_COUNTS.SOURCE file MODEL.CLASS_COUNTS.FILE counts.csv."
        )
    bare = cfg.clone()
    bare.defrost()
    bare.MODEL.WEIGHTS = ""  # DefaultPredictor's own checkpointer loads nothing
    bare.freeze()
    predictor = DefaultPredictor(bare)
    checkpointer = IIFCheckpointer(
        predictor.model, allow_class_mismatch=cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH
    )
    try:
        checkpointer.load_trained(cfg.MODEL.WEIGHTS)
    except UntrainedWeightsError as e:
        raise ValueError(f"{e}; pass the run's model_final.pth (and its config).") from None
    predictor.cfg = cfg
    return predictor


def _read(path: str):
    """The image at ``path`` as detectron2 reads it (BGR, uint8).

    Raises:
        ValueError: one line naming the file: it is not an image, is truncated or corrupt, or
            is 16-bit (which detectron2 would read as all white).
    """
    from detectron2.data.detection_utils import read_image

    from iif_d2.data.validate import check_image_header

    problem = check_image_header(path)
    if problem is None and os.path.exists(path) and not os.path.isfile(path):
        problem = "is not a regular file (a pipe or device?); give an image file"
    if problem:
        raise ValueError(f"{path} {problem}.")
    from PIL import Image

    try:
        return read_image(path, format="BGR")
    except Image.DecompressionBombError as e:  # PIL refuses to decode it at all
        raise ValueError(
            f"{path} is too large to decode safely ({' '.join(str(e).split())}); resize it or "
            "remove it from the folder."
        ) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated, corrupt
        raise ValueError(
            f"{path} cannot be read as an image ({' '.join(str(e).split())}); replace the "
            "file or remove it from the folder."
        ) from None


def output_names(paths):
    """The PNG names of the images at ``paths``: ``<stem>.png``, and ``<stem>_<extension>.png``
    for images that share a stem (``a.jpg`` and ``a.png`` give ``a_jpg.png`` and ``a_png.png``),
    so no PNG replaces another; the order of ``paths`` is kept.

    Raises:
        ValueError: two images would still give one name (the same file name in two folders of
            a dataset, say), before anything is drawn.
    """
    split = [os.path.splitext(os.path.basename(p)) for p in paths]
    stems = [stem for stem, _ in split]
    names = [
        f"{stem}_{ext.lstrip('.')}.png" if stems.count(stem) > 1 else f"{stem}.png"
        for stem, ext in split
    ]
    seen = {}
    for path, name in zip(paths, names):
        if name in seen:
            raise ValueError(
                f"{seen[name]} and {path} would both be drawn to {name}; rename one of them "
                "(or move it to another folder)."
            )
        seen[name] = path
    return names


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

    Raises:
        ValueError: an image that cannot be read (named; checked before the model is built and
            before anything is written), an output folder that is the input folder or a file,
            two images that would give one PNG (:func:`output_names`), a PNG that cannot be
            written (no space left, say: named).
    """
    import numpy as np
    from detectron2.utils.visualizer import Visualizer
    from PIL import Image

    from iif_d2.utils.io import WriteError, atomic_write

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
        items, metadata = dataset_items(dataset, num)
    else:
        items, metadata = folder_items(input_dir, num, cfg)
    images = [_read(path) for path, _ in items]  # an unreadable image: before any work
    for (path, _), bgr in zip(items, images):
        side = (scale or 1.0) * max(bgr.shape[:2])
        if scale is not None and side > MAX_PANEL_PIXELS:
            raise ValueError(
                f"--scale {scale:g} makes a panel of {side:.0f} pixels for {path} "
                f"({bgr.shape[1]} x {bgr.shape[0]}); give a --scale whose panels stay within "
                f"{MAX_PANEL_PIXELS} pixels."
            )
    names = output_names([path for path, _ in items])  # two images, one PNG: before any work
    predictor = build_predictor(cfg)
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for (_, record), bgr, name in zip(items, images, names):
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
        out = os.path.join(output_dir, name)
        image = Image.fromarray(np.concatenate(panels, axis=1))
        try:
            atomic_write(out, lambda f, image=image: image.save(f, format="PNG"))
        except WriteError as e:  # no space left, an I/O error: names the file
            raise ValueError(f"{e}; free some space or choose another output folder.") from None
        written.append(out)
    return written
