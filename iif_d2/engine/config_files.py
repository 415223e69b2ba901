"""Reading a run's config: config files (safe YAML, ``_BASE_`` chains checked: local, acyclic,
inside the config trees), overrides, and the settings detectron2 would fail on only after the
first steps. Every command that reads a user's config goes through :func:`load_config_file`."""

import functools
import math
import os
import re
from typing import Any, Dict, List, Sequence

import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.utils.file_io import PathManager

from iif_d2 import model_zoo
from iif_d2.config import add_iif_config, apply_deprecated_keys
from iif_d2.data.training_set import check_schedule_opts
from iif_d2.utils.io import missing_reason

__all__ = [
    "RunConfigError",
    "check_checkpoint_config",
    "check_config_tree",
    "check_run_config",
    "config_tree_files",
    "load_config",
    "load_config_file",
    "local_config_path",
    "merge_overrides",
]


class RunConfigError(ValueError):
    """A config file, run folder or launch setting the run cannot start with: the message is
    one line that names the problem and the fix (train_net.py prints it and exits 2)."""


def _repository_configs() -> List[str]:
    """The config trees a ``_BASE_`` may point into besides the config's own folder: the
    project's (a checkout's configs/, the package's), and detectron2's model zoo."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    roots = [
        os.path.join(os.path.dirname(package), "configs"),  # a clone's
        os.path.join(package, "model_zoo", "configs"),  # a wheel's (iif_d2.model_zoo)
    ]
    try:
        import detectron2

        roots.append(os.path.join(os.path.dirname(detectron2.__file__), "model_zoo", "configs"))
    except ImportError:  # pragma: no cover
        pass
    return [os.path.realpath(r) for r in roots if os.path.isdir(r)]


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def local_config_path(config_file: str) -> str:
    """A local path for ``config_file`` (a ``<scheme>://`` path through detectron2's
    PathManager, never a web address)."""
    if re.match(r"(?i)(https?|ftp)://", config_file):
        raise RunConfigError(
            f"--config-file {config_file}: configs are read from local files, never fetched "
            "from the web; download it, check it, and give its local path."
        )
    if config_file.startswith(model_zoo.CONFIG_PREFIX):
        try:
            return model_zoo.get_config_file(config_file)
        except FileNotFoundError as e:
            raise RunConfigError(f"--config-file: {e}") from None
    if config_file.lower().startswith("file://"):  # a local file named as a URL
        return config_file[len("file://") :]
    if "://" in config_file:
        try:
            config_file = PathManager.get_local_path(config_file)
        except Exception as e:  # no handler for the scheme, or not found
            raise RunConfigError(f"--config-file {config_file}: {e}".splitlines()[0]) from None
    return config_file


# the most config files one _BASE_ tree may read (a file named twice counts twice, as
# detectron2 reads it twice): a few levels in practice; a "diamond" of bases naming the same
# file twice at each level would make detectron2 read 2**depth files
MAX_CONFIG_FILES = 64


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, refusing a key given twice in one mapping (YAML keeps the last one
    silently: a second ``SOLVER:`` block would drop every key of the first)."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                f"{key_node.start_mark.line + 1}); YAML would keep only the last: merge them",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


# the most values a config file may expand to: detectron2's full config has ~600; YAML aliases
# (``*name``, as cfg.dump() writes repeated lists) nested in each other expand exponentially
MAX_CONFIG_VALUES = 100_000


def _expanded_size(data, sizes=None) -> int:
    """How many values ``data`` holds once every alias is expanded (shared objects counted as
    often as they are referenced, each measured once)."""
    sizes = {} if sizes is None else sizes
    if not isinstance(data, (dict, list)):
        return 1
    if id(data) not in sizes:
        items = data.values() if isinstance(data, dict) else data
        sizes[id(data)] = 1 + sum(_expanded_size(v, sizes) for v in items)
    return sizes[id(data)]


def _read_config_yaml(path: str, named_by: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        what = (
            "is a folder"
            if os.path.isdir(path)
            else "is not a regular file (a pipe or device?)"
            if os.path.exists(path)
            else missing_reason(path)
        )
        raise RunConfigError(f"{named_by} {path} {what}; give a YAML config file.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)  # safe: no Python tags
    except UnicodeDecodeError:
        raise RunConfigError(f"{path} is not UTF-8 text; give a YAML config file.") from None
    except yaml.YAMLError as e:  # a !!python tag included: safe_load constructs no object
        problem = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise RunConfigError(f"{path}: {problem}") from None
    except RecursionError:
        raise RunConfigError(
            f"{path} nests its values too deeply to be a config file; give a YAML config file."
        ) from None
    if data is None:
        raise RunConfigError(f"{path} is empty; a config file maps keys to values (KEY: value).")
    try:
        size = _expanded_size(data)
    except RecursionError:  # a value that holds itself (&a [*a])
        size = math.inf
    if size > MAX_CONFIG_VALUES:
        raise RunConfigError(
            f"{path} expands to more than {MAX_CONFIG_VALUES} values (YAML aliases *name nested "
            "in each other); a config file spells its values out."
        )
    if not isinstance(data, dict):
        raise RunConfigError(
            f"{path} holds a YAML {type(data).__name__}, not a mapping of config keys "
            "(KEY: value lines)."
        )
    return data


def _default_config():
    cfg = get_cfg()
    add_iif_config(cfg)
    return cfg


def _check_sections(data: Dict[str, Any], defaults, path: str, prefix: str = "") -> None:
    """A section of the config (``SOLVER:``, ``MODEL.ROI_HEADS:`` ...) given as anything but a
    mapping: named in one line (detectron2 would print the whole section)."""
    for key, value in data.items():
        default = defaults.get(key) if isinstance(key, str) else None
        if isinstance(default, CfgNode):
            if not isinstance(value, dict):
                raise RunConfigError(
                    f"{path}: {prefix}{key} is a YAML {type(value).__name__}; it is a section "
                    f"of keys ({key}: then indented KEY: value lines)."
                )
            _check_sections(value, default, path, f"{prefix}{key}.")


def check_config_tree(config_file: str) -> str:
    """Check a config file and its ``_BASE_`` chain before detectron2 reads them: each file is
    plain YAML (no Python tags) holding a mapping, each ``_BASE_`` a local file (never a web
    address) inside the config's folder or the project's config tree, with no cycle.

    Args:
        config_file: the path given with ``--config-file``.

    Returns:
        the local path of ``config_file``.

    Raises:
        RunConfigError: naming the file, the problem and the fix.
    """
    return _walk_config_tree(config_file)[0]


def _walk_config_tree(config_file: str):
    """:func:`check_config_tree`'s walk: (the local path of ``config_file``, the real paths of
    the files it read, in reading order)."""
    top = local_config_path(config_file)
    roots = [os.path.realpath(os.path.dirname(os.path.abspath(top)))] + _repository_configs()
    read = []
    defaults = functools.lru_cache(maxsize=1)(_default_config)

    def visit(path: str, chain: List[str], named_by: str):
        real = os.path.realpath(path)
        if real in chain:
            cycle = " -> ".join(os.path.basename(p) for p in [*chain[chain.index(real) :], real])
            raise RunConfigError(f"_BASE_ cycle in {path}: {cycle}; remove one _BASE_.")
        read.append(real)
        if len(read) > MAX_CONFIG_FILES:
            raise RunConfigError(
                f"{config_file}: its _BASE_ tree reads more than {MAX_CONFIG_FILES} config files "
                f"(e.g. {os.path.basename(path)} {read.count(real)} times); name each base once."
            )
        data = _read_config_yaml(path, named_by)
        _check_sections(data, defaults(), path)
        bases = data.get("_BASE_", [])
        if not isinstance(bases, (str, list)):
            raise RunConfigError(
                f"{path}: _BASE_ is a {type(bases).__name__}; it names a config file (or a list "
                "of them)."
            )
        for base in [bases] if isinstance(bases, str) else bases:
            if not isinstance(base, str):
                raise RunConfigError(f"{path}: _BASE_ {base!r} is not a file name.")
            if not base.strip():
                raise RunConfigError(f"{path}: _BASE_ is empty; name a config file or remove it.")
            if "://" in base:
                raise RunConfigError(
                    f"{path}: _BASE_ {base} is not a local file; bases are never fetched: "
                    "copy it beside the config and name it by its relative path."
                )
            target = os.path.expanduser(base)
            if not os.path.isabs(target):  # relative to the config that names it, as detectron2
                target = os.path.join(os.path.dirname(path), target)
            if not any(_inside(os.path.realpath(target), r) for r in roots):
                raise RunConfigError(
                    f"{path}: _BASE_ {base} resolves to {os.path.realpath(target)}, outside the "
                    f"config's folder {roots[0]} and the project's configs; copy it beside the "
                    "config (or give it itself with --config-file)."
                )
            visit(target, [*chain, real], f"_BASE_ of {path}:")

    visit(top, [], "--config-file")
    return top, read


def config_tree_files(config_file: str) -> List[str]:
    """The local files a config reads: ``config_file`` and its ``_BASE_`` chain (checked by
    :func:`check_config_tree`), each once (real paths), e.g. the inputs an output path must not
    overwrite."""
    return list(dict.fromkeys(_walk_config_tree(config_file)[1]))


def load_config_file(config_file: str, opts: Sequence[str] = ()):
    """A config file (checked by :func:`check_config_tree`, read with ``yaml.safe_load``: no
    code runs) and overrides ``KEY VALUE ...`` on detectron2's defaults with iif-d2's keys
    (deprecated keys moved to their new names), not yet resolved nor frozen. Every command that
    reads a user's config (train_net.py, tools/visualize.py) goes through here.

    Raises:
        RunConfigError: a bad config file, or overrides that are not KEY VALUE pairs of known
            keys.
    """
    path = check_config_tree(config_file)
    cfg = get_cfg()
    add_iif_config(cfg)
    try:
        cfg.merge_from_file(path, allow_unsafe=False)  # no !!python tags: no code runs
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise RunConfigError(f"{config_file}: {_yacs_message(e)}") from None
    return merge_overrides(cfg, opts)


def merge_overrides(cfg, opts: Sequence[str]):
    """``cfg`` with the command line's overrides ``KEY VALUE ...`` merged (deprecated keys moved
    to their new names).

    Raises:
        RunConfigError: one line: a key without a value, an unknown key, a value of the wrong
            type, a whole section given one value.
    """
    opts = list(opts)
    if len(opts) % 2:
        raise RunConfigError(
            f"config overrides come in KEY VALUE pairs; {opts[-1]!r} has no value."
        )
    for key in opts[0::2]:
        _check_not_a_section(cfg, key)
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        raise RunConfigError(f"config overrides: {_yacs_message(e)}") from None
    return apply_deprecated_keys(cfg)


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
    r"for config key: (\S+)"
)


def _yacs_message(error: BaseException) -> str:
    """yacs's error as one line; its type mismatch said as what the key takes."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    text = " ".join(str(text).split())
    match = _TYPE_MISMATCH.fullmatch(text)
    if match:
        want, got, default, value, key = match.groups()
        text = f"{key} takes a value of type {want}, as the config's {default}; {value} is a {got}."
    return text


def _check_not_a_section(cfg, key) -> None:
    """An override ``KEY VALUE`` whose key names a section (e.g. SOLVER.EPOCH_SCHEDULE): one
    line naming the section's keys (yacs would report a type mismatch of two node reprs)."""
    from detectron2.config import CfgNode

    node = cfg
    for part in str(key).split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return  # an unknown key: merge_from_list names it
        node = node[part]
    if isinstance(node, CfgNode):
        keys = sorted(node)
        raise RunConfigError(
            f"config overrides: {key} is a section, not a value; set its keys "
            f"({', '.join(keys)}), e.g. {key}.{keys[0] if keys else 'KEY'} VALUE."
        )


def load_config(args):
    """The config of ``args`` (detectron2's argument parser): :func:`load_config_file` of
    ``args.config_file`` with ``args.opts``."""
    cfg = load_config_file(args.config_file, args.opts)
    try:
        check_schedule_opts(cfg, args.opts)
    except ValueError as e:
        raise RunConfigError(str(e)) from None
    return cfg


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_run_config(cfg, training: bool = True) -> None:
    """Settings detectron2 would divide by, fail on only after the first steps (or in a
    worker, with a traceback), or silently train something else than asked.

    Args:
        cfg: the run's config.
        training: whether the run trains (else the solver's and training input's settings are
            not used, and not checked).

    Raises:
        RunConfigError: naming the key, its value and the fix.
    """
    _check_output_dir(cfg.OUTPUT_DIR)
    _check_model_device(cfg.MODEL.DEVICE)
    mean, std = list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)
    channels = 1 if cfg.INPUT.FORMAT == "L" else 3
    if len(mean) != channels or len(std) != channels:
        raise RunConfigError(
            f"MODEL.PIXEL_MEAN {mean} and MODEL.PIXEL_STD {std} need one value per channel of "
            f"INPUT.FORMAT {cfg.INPUT.FORMAT!r} ({channels})."
        )
    if not all(_number(v) and v > 0 for v in std):
        raise RunConfigError(f"MODEL.PIXEL_STD {std} must be positive numbers (it divides).")
    check_checkpoint_config(cfg)
    _check_finite(cfg)
    if not (cfg.SEED == -1 or 0 <= cfg.SEED < 2**32):
        raise RunConfigError(f"SEED {cfg.SEED} must be -1 (a random seed) or 0 to 2**32 - 1.")
    if cfg.TEST.DETECTIONS_PER_IMAGE < 1:
        raise RunConfigError(
            f"TEST.DETECTIONS_PER_IMAGE {cfg.TEST.DETECTIONS_PER_IMAGE} must be >= 1 (with no "
            "detection every metric is nan)."
        )
    for key in _UNIT_INTERVAL_KEYS:
        node, name = cfg, key.split(".")
        for part in name[:-1]:
            node = node.get(part, {})
        value = node.get(name[-1]) if hasattr(node, "get") else None
        if value is not None and not 0 <= value <= 1:
            raise RunConfigError(f"{key} {value} must be between 0 and 1.")
    if cfg.TEST.EVAL_PERIOD < 0:
        raise RunConfigError(
            f"TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD} must be >= 0 (0: evaluate at the end only)."
        )
    if not training:
        if not cfg.DATASETS.TEST:
            raise RunConfigError(
                "DATASETS.TEST is empty: --eval-only has nothing to evaluate; name the test "
                "dataset(s)."
            )
        return
    solver = cfg.SOLVER
    if not cfg.DATASETS.TRAIN:
        raise RunConfigError("DATASETS.TRAIN is empty; name the training dataset(s).")
    if solver.MAX_ITER < 1:
        raise RunConfigError(
            f"SOLVER.MAX_ITER {solver.MAX_ITER}: training needs at least 1 iteration (to "
            "evaluate a model without training, use --eval-only with MODEL.WEIGHTS)."
        )
    if solver.IMS_PER_BATCH < 1:
        raise RunConfigError(f"SOLVER.IMS_PER_BATCH {solver.IMS_PER_BATCH} must be >= 1.")
    if not _number(solver.BASE_LR) or solver.BASE_LR < 0:
        raise RunConfigError(f"SOLVER.BASE_LR {solver.BASE_LR!r} must be a finite number >= 0.")
    if solver.WARMUP_ITERS < 0:
        raise RunConfigError(f"SOLVER.WARMUP_ITERS {solver.WARMUP_ITERS} must be >= 0.")
    steps = list(solver.STEPS)
    if any(not isinstance(s, int) or s < 1 for s in steps) or steps != sorted(steps):
        raise RunConfigError(
            f"SOLVER.STEPS {tuple(steps)} must be increasing iterations >= 1 (where the learning "
            "rate drops)."
        )
    if not solver.GAMMA > 0:
        raise RunConfigError(
            f"SOLVER.GAMMA {solver.GAMMA} must be > 0 (the factor of each learning-rate drop at "
            "SOLVER.STEPS, e.g. 0.1)."
        )
    if not 0 <= solver.MOMENTUM < 1:
        raise RunConfigError(f"SOLVER.MOMENTUM {solver.MOMENTUM} must be in [0, 1).")
    if not 0 <= solver.WARMUP_FACTOR <= 1:
        raise RunConfigError(
            f"SOLVER.WARMUP_FACTOR {solver.WARMUP_FACTOR} must be in [0, 1] (the learning "
            "rate's first fraction during warmup)."
        )
    train = list(cfg.DATASETS.TRAIN)
    twice = sorted({name for name in train if train.count(name) > 1})
    if twice:
        raise RunConfigError(
            f"DATASETS.TRAIN names {', '.join(twice)} twice: every image would be counted and "
            "drawn twice; name each dataset once (repeat-factor sampling: DATALOADER.SAMPLER_TRAIN "
            "RepeatFactorTrainingSampler)."
        )
    if cfg.DATALOADER.NUM_WORKERS < 0:
        raise RunConfigError(
            f"DATALOADER.NUM_WORKERS {cfg.DATALOADER.NUM_WORKERS} must be >= 0 (0: load in the "
            "training process)."
        )
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if not sizes or any(not _number(v) or v < 1 for v in sizes):
        raise RunConfigError(
            f"INPUT.MIN_SIZE_TRAIN {tuple(sizes)} must hold at least one size >= 1 (pixels)."
        )
    if cfg.INPUT.MAX_SIZE_TRAIN < 1:
        raise RunConfigError(f"INPUT.MAX_SIZE_TRAIN {cfg.INPUT.MAX_SIZE_TRAIN} must be >= 1.")
    for key in ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE"):
        node, name = cfg, key.split(".")
        for part in name:
            node = node[part]
        if node < 1:
            raise RunConfigError(
                f"{key} {node} must be >= 1 (sampled proposals or anchors per image; with 0 "
                "the head would learn nothing)."
            )


def check_checkpoint_config(cfg) -> None:
    """The checkpoint schedule's settings (the trainer's hooks check them too).

    Raises:
        RunConfigError: naming the key, its value and the fix.
    """
    period = cfg.SOLVER.CHECKPOINT_PERIOD
    if not isinstance(period, int) or period < 1:
        raise RunConfigError(
            f"SOLVER.CHECKPOINT_PERIOD {period!r} must be an integer >= 1 (iterations between "
            "two checkpoints; SOLVER.MAX_ITER for a final checkpoint only)."
        )
    kept = cfg.SOLVER.CHECKPOINTS_KEPT
    if not isinstance(kept, int) or kept < 0:
        raise RunConfigError(f"SOLVER.CHECKPOINTS_KEPT {kept!r} must be >= 0 (0: keep all).")
    if not 0 <= cfg.SOLVER.MAX_ITER <= MAX_ITERATIONS:
        raise RunConfigError(
            f"SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} must be between 0 and {MAX_ITERATIONS}."
        )


# the most iterations a run may ask for (detectron2's ETA and event files hold C ints)
MAX_ITERATIONS = 2**31 - 1
# probabilities and IoU thresholds: outside [0, 1] they keep every box or none
_UNIT_INTERVAL_KEYS = (
    "MODEL.RPN.NMS_THRESH",
    "MODEL.ROI_HEADS.NMS_THRESH_TEST",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "MODEL.RETINANET.NMS_THRESH_TEST",
    "MODEL.RETINANET.SCORE_THRESH_TEST",
    "MODEL.FCOS.NMS_THRESH_TEST",
    "MODEL.FCOS.SCORE_THRESH_TEST",
)


def _check_finite(cfg, prefix: str = "") -> None:
    """No NaN or infinity anywhere in the config (a NaN learning-rate factor trains a NaN model
    without a word)."""
    for key, value in cfg.items():
        if isinstance(value, CfgNode):
            _check_finite(value, f"{prefix}{key}.")
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        flat = [v for item in values for v in (item if isinstance(item, (list, tuple)) else [item])]
        if any(isinstance(v, float) and not math.isfinite(v) for v in flat):
            raise RunConfigError(f"{prefix}{key} {value!r} must be finite (not nan or inf).")


def _check_output_dir(output_dir: str) -> None:
    """OUTPUT_DIR: a folder that exists or can be made, and written."""
    from iif_d2.utils.cli_checks import UsageError, check_output_folder

    if not output_dir or not str(output_dir).strip():
        raise RunConfigError("OUTPUT_DIR is empty; give the run's folder (e.g. output/run1).")
    try:
        check_output_folder(output_dir, "OUTPUT_DIR", create=True)
    except UsageError as e:
        raise RunConfigError(str(e)) from None


def _check_model_device(device: str) -> None:
    from iif_d2.utils.cli_checks import UsageError, check_device

    try:
        check_device(device, "MODEL.DEVICE")
    except UsageError as e:
        raise RunConfigError(str(e)) from None
