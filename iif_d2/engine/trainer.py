"""``Trainer``: detectron2's DefaultTrainer with IIF's evaluators, decoupled training and
multi-process CPU training; ``setup`` builds the config the way detectron2's tools do."""

import functools
import logging
import os
import pickle
import re
from typing import Any, Dict, List, Sequence

import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from iif_d2 import model_zoo
from iif_d2.config import add_iif_config, apply_deprecated_keys
from iif_d2.data.heldout import build_heldout_loader
from iif_d2.data.loader import ResumableTrainLoader, build_resumable_train_loader, training_dicts
from iif_d2.data.samplers import build_train_sampler
from iif_d2.data.training_set import check_schedule_opts, needs_class_counts, resolve_training_run
from iif_d2.engine.checkpoint import IIFCheckpointer
from iif_d2.engine.hooks import FASAHook, RngStateGatherer, RunCheckpointer
from iif_d2.engine.run_lock import acquire_output_dir
from iif_d2.evaluation import build_evaluator
from iif_d2.modeling.config_check import check_settings_used, num_classes_problem
from iif_d2.modeling.fasa import FASA
from iif_d2.utils.compat import cpu_safe_ddp
from iif_d2.utils.io import write_json_atomic
from iif_d2.utils.machine import cpu_capability, cpu_model
from iif_d2.utils.rng import rng_preserved, rng_state, set_rng_state

__all__ = [
    "RunConfigError",
    "Trainer",
    "check_config_tree",
    "check_eval_weights",
    "check_resume_config",
    "check_run_config",
    "checkpointer_for",
    "freeze_all_but_box_classifier",
    "load_config",
    "load_config_file",
    "remove_stale_temporary_files",
    "setup",
]

logger = logging.getLogger(__name__)
# detectron2 main's DefaultTrainer saves and loads its inner trainer ("_trainer"); v0.6 does not
_UPSTREAM_SAVES_TRAINER = "state_dict" in DefaultTrainer.__dict__


class RunConfigError(ValueError):
    """A config file, run folder or launch setting the run cannot start with: the message is
    one line that names the problem and the fix (train_net.py prints it and exits 2)."""


def freeze_all_but_box_classifier(model) -> int:
    """Freeze every parameter except the box classifiers' ``cls_score`` (decoupled stage 2).

    Returns:
        the number of parameters left trainable.
    """
    trainable = 0
    for name, param in model.named_parameters():
        keep = ".box_predictor." in f".{name}" and ".cls_score." in name
        param.requires_grad_(keep)
        trainable += param.numel() if keep else 0
    if trainable == 0:
        raise ValueError("TRAIN_ONLY_CLASSIFIER: the model has no box_predictor.cls_score.")
    return trainable


def _check_resolved(cfg, model):
    """The training-set facts the trainer needs are in ``cfg`` (resolve_training_set ran)."""
    fasa = cfg.MODEL.ROI_BOX_HEAD.FASA
    modules = [m for m in model.modules() if isinstance(m, FASA)]
    if fasa.ENABLED and not modules:
        raise ValueError(
            "MODEL.ROI_BOX_HEAD.FASA.ENABLED is set but the model has no FASA box predictor "
            f"(META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}, ROI_HEADS.NAME "
            f"{cfg.MODEL.ROI_HEADS.NAME!r}): FASA needs IIFStandardROIHeads or "
            "IIFCascadeROIHeads. Set FASA.ENABLED False or use those ROI heads."
        )
    if fasa.ENABLED and (fasa.START_ITER < 0 or fasa.ADAPT_PERIOD < 0):
        raise ValueError(
            "FASA START_ITER / ADAPT_PERIOD -1 (one epoch) are not resolved into iterations: "
            "build the config with iif_d2.engine.trainer.setup (train_net.py does) or call "
            "iif_d2.resolve_training_set(cfg) before creating the Trainer."
        )


class Trainer(DefaultTrainer):
    """DefaultTrainer with LVIS/COCO evaluation, ``TRAIN_ONLY_CLASSIFIER`` and CPU DDP."""

    def __init__(self, cfg, dataset_dicts=None):
        """
        Args:
            cfg: a config whose training-set facts are resolved (:func:`setup`, or
                :func:`iif_d2.resolve_training_set` before freezing).
            dataset_dicts: DATASETS.TRAIN's dicts if already loaded for ``cfg`` (the second
                value :func:`setup_run` / :func:`~iif_d2.data.training_set.resolve_training_run`
                return); None: loaded here.
        """
        # one load of the training dicts per process: the loader's, and FASA's held-out ones
        self._train_dicts, self._heldout_dicts = training_dicts(cfg, dataset_dicts)
        self._rng_states, self._loaded_run_state = (None, None), None
        with cpu_safe_ddp():
            super().__init__(cfg)
        _check_resolved(cfg, self.model)
        problem = num_classes_problem(cfg, self.model, self._train_dicts)  # ids, if no metadata
        if problem:
            raise ValueError(problem)

    # detectron2 v0.6's DefaultTrainer leaves its inner trainer's state (the optimizer's
    # momentum) out of checkpoints; main saves it under "_trainer". Save it the same way here,
    # so that a resumed run continues with the same optimizer state on both versions.
    def state_dict(self):
        """detectron2's trainer state (iteration, hooks, optimizer under "_trainer"), plus
        "run_state": every rank's random generators and the data stream's seed."""
        ret = super().state_dict()
        if "_trainer" not in ret:
            ret["_trainer"] = self._trainer.state_dict()
        at, states = self._rng_states
        run_state = {"rng": states if at == self.iter else [rng_state()]}
        if isinstance(self.data_loader, ResumableTrainLoader):
            run_state["data"] = self.data_loader.state_dict()
        ret["run_state"] = run_state
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if not _UPSTREAM_SAVES_TRAINER and "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        self._loaded_run_state = state_dict.get("run_state", {})

    def gather_rng_states(self):
        """Keep every rank's generators (:func:`iif_d2.utils.rng.rng_state`) for this
        iteration's checkpoint; a collective with several ranks (every rank calls it:
        :class:`iif_d2.engine.hooks.RunStateCheckpointer` does)."""
        state = rng_state()
        states = comm.all_gather(state) if comm.get_world_size() > 1 else [state]
        self._rng_states = (self.iter, states)

    def resume_or_load(self, resume=True):
        """detectron2's ``resume_or_load``; a resumed run then continues the data stream at
        ``start_iter`` (no skipped image is read) with the checkpoint's data seed, and this
        rank's random generators as they were when the checkpoint was taken: it trains as the
        uninterrupted run would have (bitwise on CPU for the same threads)."""
        self._loaded_run_state = None
        super().resume_or_load(resume=resume)
        run_state, self._loaded_run_state = self._loaded_run_state, None
        if run_state is None:
            return
        loader, rank = self.data_loader, comm.get_rank()
        if isinstance(loader, ResumableTrainLoader):
            loader.resume(self.start_iter, run_state.get("data"))
            _restart_data_iterator(self._trainer)
        else:
            logger.warning(
                "The training loader (%s) cannot be resumed at an iteration: the resumed run "
                "reads the data stream from its start.",
                type(loader).__name__,
            )
        states = run_state.get("rng", [])
        if rank < len(states):
            set_rng_state(states[rank])
        else:
            logger.warning(
                "The checkpoint holds no random-generator state for rank %d: the resumed run's "
                "random draws differ from an uninterrupted run's.",
                rank,
            )

    def train(self):
        """detectron2's ``train``. A resumed run whose checkpoint is already at the last
        iteration (killed while it saved ``model_final.pth``) trains nothing but writes
        ``model_final.pth`` from that checkpoint; a checkpoint past ``SOLVER.MAX_ITER`` is an
        error (:class:`RunConfigError`), not a run that silently does nothing."""
        if self.start_iter > self.max_iter:
            raise RunConfigError(
                f"The checkpoint in {self.cfg.OUTPUT_DIR} is at iteration {self.start_iter}, "
                f"past SOLVER.MAX_ITER {self.max_iter}: resuming would train nothing. Resume "
                "with the MAX_ITER the run was started with, or start a new run (another "
                "OUTPUT_DIR, MODEL.WEIGHTS set to that checkpoint)."
            )
        if self.start_iter == self.max_iter and self.max_iter > 0:
            logger.info(
                "The checkpoint is at the last iteration (%d): writing model_final.pth from it.",
                self.max_iter - 1,
            )
            self.iter = self.max_iter - 1
            self.checkpointer.save("model_final", iteration=self.iter)  # main rank only
        return super().train()

    @classmethod
    def build_model(cls, cfg):
        """detectron2's model; an error if it would ignore an iif-d2 setting of ``cfg``
        (:func:`iif_d2.modeling.config_check.check_settings_used`)."""
        model = super().build_model(cfg)
        check_settings_used(cfg, model)
        if cfg.MODEL.ROI_BOX_HEAD.TRAIN_ONLY_CLASSIFIER:
            n = freeze_all_but_box_classifier(model)
            logger.info("Decoupled training: only the box classifier is trained (%d params).", n)
        return model

    def build_train_loader(self, cfg):
        """The training loader on the training dicts (FASA's held-out images removed), with
        the sampler of :func:`build_train_sampler` (repeat factors on those same dicts):
        :class:`iif_d2.data.loader.ResumableTrainLoader` (detectron2's batches and mapper,
        resumable exactly); for samplers iif-d2 does not build, detectron2's loader."""
        dicts = self._train_dicts
        sampler = build_train_sampler(cfg, dicts)
        if sampler is None:
            return build_detection_train_loader(cfg, dataset=dicts)
        return build_resumable_train_loader(cfg, dicts, sampler)

    def build_hooks(self):
        """detectron2's hooks, plus :class:`FASAHook` (before the checkpointer and evaluation,
        so a checkpoint taken at an adaptation holds the adapted rates) when FASA is on, then
        :class:`RngStateGatherer` (every rank's generators for the checkpoint); evaluation
        runs under :func:`iif_d2.utils.rng.rng_preserved`."""
        # DefaultTrainer built a DetectionCheckpointer, which build_hooks' PeriodicCheckpointer
        # captures: replace it first (loading runs no code, writes are atomic, resume skips a
        # corrupt newest checkpoint)
        check_run_config(self.cfg)
        self.checkpointer = checkpointer_for(self.checkpointer.model, self.cfg, self.checkpointer)
        hooks = super().build_hooks()
        for i, h in enumerate(hooks):
            if isinstance(h, d2_hooks.PeriodicCheckpointer):  # bounded, no duplicate final
                hooks[i] = RunCheckpointer(
                    self.checkpointer,
                    self.cfg.SOLVER.CHECKPOINT_PERIOD,
                    max_to_keep=self.cfg.SOLVER.CHECKPOINTS_KEPT,
                )
            elif isinstance(h, d2_hooks.EvalHook):  # evaluating leaves training's draws alone
                h._func = _rng_kept(h._func)
        fasa = self.cfg.MODEL.ROI_BOX_HEAD.FASA
        if fasa.ENABLED:
            cfg, heldout = self.cfg, self._heldout_dicts

            def loader():  # built at the first adaptation
                return build_heldout_loader(cfg, heldout)

            hooks.insert(_checkpoint_position(hooks), FASAHook(fasa.ADAPT_PERIOD, loader))
        # every rank's generators, taken after FASA's adaptation, for the checkpoint after it
        hooks.insert(
            _checkpoint_position(hooks), RngStateGatherer(self.cfg.SOLVER.CHECKPOINT_PERIOD)
        )
        return hooks

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's test, the evaluators' AP-fixed score floors attached to the model's ROI
        heads meanwhile (:func:`iif_d2.evaluation.score_floor.score_floors_attached`, with
        ``TEST.AP_FIXED.ADAPTIVE_FLOOR``); the results are also written to
        OUTPUT_DIR/inference/results.json."""
        from iif_d2.evaluation import score_floors_attached, uses_score_floor

        if evaluators is None and uses_score_floor(cfg):  # built first, to attach their floors
            evaluators = [cls.build_evaluator(cfg, name) for name in cfg.DATASETS.TEST]
        with score_floors_attached(model, evaluators):
            results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            write_json_atomic(os.path.join(cfg.OUTPUT_DIR, "inference", "results.json"), results)
        return results


def _checkpoint_position(hooks) -> int:
    """Where the checkpointer is in detectron2's hooks (main rank), or would be (others)."""
    late = (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook, d2_hooks.PeriodicWriter)
    return next((i for i, h in enumerate(hooks) if isinstance(h, late)), len(hooks))


def _rng_kept(fn):
    """``fn`` run under :func:`iif_d2.utils.rng.rng_preserved`."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with rng_preserved():
            return fn(*args, **kwargs)

    return run


def _restart_data_iterator(trainer):
    """Make a detectron2 SimpleTrainer iterate its data loader anew (main creates the iterator
    on first use; v0.6 at construction)."""
    if "_data_loader_iter_obj" in vars(trainer):
        trainer._data_loader_iter_obj = None
    else:
        trainer._data_loader_iter = iter(trainer.data_loader)


def checkpointer_for(model, cfg, like=None) -> IIFCheckpointer:
    """iif-d2's checkpointer for ``model`` in OUTPUT_DIR (with ``like``'s checkpointables)."""
    allow = cfg.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH
    if like is not None:
        return IIFCheckpointer.from_checkpointer(like, allow_class_mismatch=allow)
    return IIFCheckpointer(model, save_dir=cfg.OUTPUT_DIR, allow_class_mismatch=allow)


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


def _local_config_path(config_file: str) -> str:
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
    if "://" in config_file:
        try:
            config_file = PathManager.get_local_path(config_file)
        except Exception as e:  # no handler for the scheme, or not found
            raise RunConfigError(f"--config-file {config_file}: {e}".splitlines()[0]) from None
    return config_file


def _read_config_yaml(path: str, named_by: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise RunConfigError(f"{named_by} {path} {what}; give a YAML config file.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise RunConfigError(f"{path} is not UTF-8 text; give a YAML config file.") from None
    except yaml.YAMLError as e:  # a !!python tag included: safe_load constructs no object
        problem = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise RunConfigError(f"{path}: {problem}") from None
    if data is None:
        raise RunConfigError(f"{path} is empty; a config file maps keys to values (KEY: value).")
    if not isinstance(data, dict):
        raise RunConfigError(
            f"{path} holds a YAML {type(data).__name__}, not a mapping of config keys "
            "(KEY: value lines)."
        )
    return data


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
    top = _local_config_path(config_file)
    roots = [os.path.realpath(os.path.dirname(os.path.abspath(top)))] + _repository_configs()

    def visit(path: str, chain: List[str], named_by: str):
        real = os.path.realpath(path)
        if real in chain:
            cycle = " -> ".join(os.path.basename(p) for p in [*chain[chain.index(real) :], real])
            raise RunConfigError(f"_BASE_ cycle in {path}: {cycle}; remove one _BASE_.")
        data = _read_config_yaml(path, named_by)
        bases = data.get("_BASE_", [])
        for base in [bases] if isinstance(bases, str) else bases:
            if not isinstance(base, str):
                raise RunConfigError(f"{path}: _BASE_ {base!r} is not a file name.")
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
    return top


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
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise RunConfigError(f"{config_file}: {' '.join(str(text).split())}") from None
    opts = list(opts)
    if len(opts) % 2:
        raise RunConfigError(
            f"config overrides come in KEY VALUE pairs; {opts[-1]!r} has no value."
        )
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise RunConfigError(f"config overrides: {' '.join(str(text).split())}") from None
    return apply_deprecated_keys(cfg)


def load_config(args):
    """The config of ``args`` (detectron2's argument parser): :func:`load_config_file` of
    ``args.config_file`` with ``args.opts``."""
    cfg = load_config_file(args.config_file, args.opts)
    try:
        check_schedule_opts(cfg, args.opts)
    except ValueError as e:
        raise RunConfigError(str(e)) from None
    return cfg


def check_run_config(cfg) -> None:
    """Settings detectron2 would divide by, or fail on only after the first steps.

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
    if cfg.SOLVER.MAX_ITER < 0:
        raise RunConfigError(f"SOLVER.MAX_ITER {cfg.SOLVER.MAX_ITER} must be >= 0.")


_TMP_FILE = re.compile(r"\..+\.(\d+)\.[0-9a-f]{8}\.tmp")  # iif_d2.utils.io.atomic_write's


def remove_stale_temporary_files(output_dir: str) -> List[str]:
    """Remove the temporary files of saves that were killed midway (``.NAME.PID.HEX.tmp``, as
    :func:`iif_d2.utils.io.atomic_write` names them) whose process is gone; call it with the
    folder locked (:func:`iif_d2.engine.run_lock.acquire_output_dir`).

    Returns:
        the removed paths.
    """
    removed = []
    if not output_dir or not os.path.isdir(output_dir):
        return removed
    for name in os.listdir(output_dir):
        found = _TMP_FILE.fullmatch(name)
        if found is None or int(found.group(1)) == os.getpid() or _alive(int(found.group(1))):
            continue
        path = os.path.join(output_dir, name)
        try:
            if os.path.isfile(path) and not os.path.islink(path):
                os.remove(path)
                removed.append(path)
        except FileNotFoundError:
            continue
    if removed:
        logger.info(
            "Removed %d temporary file(s) of an interrupted save: %s",
            len(removed),
            ", ".join(os.path.basename(p) for p in removed),
        )
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # someone else's process: leave its file
    return True


# Keys a resumed run may change: where and how fast it runs, what it logs and how it is
# evaluated, and the initialisation (the checkpoint replaces it). Everything else changes the
# model, the data or the schedule.
_RESUME_MAY_CHANGE = (
    "OUTPUT_DIR",
    "MODEL.DEVICE",
    "MODEL.WEIGHTS",
    "MODEL.KERNELS",
    "DATALOADER.NUM_WORKERS",
    "NUM_THREADS",
    "CUDNN_BENCHMARK",
    "VIS_PERIOD",
    "SEED",
    "SOLVER.CHECKPOINT_PERIOD",
    "SOLVER.CHECKPOINTS_KEPT",
    "TEST",
    "DATASETS.TEST",
    "DATASETS.PROPOSAL_FILES_TEST",
    "GLOBAL",
    "VERSION",
)
# Files the training-set resolution names (absolute paths into OUTPUT_DIR, which may have
# moved): not compared; their contents are (the resolution checks the class counts against the
# run's saved ones on a resume; the held-out ids follow from DATASETS.TRAIN and HELDOUT)
_RESOLVED = (
    "MODEL.CLASS_COUNTS.SOURCE",
    "MODEL.CLASS_COUNTS.FILE",
    "DATASETS.HELDOUT.IMAGE_IDS_FILE",
)


def _unresolved(cfg, key: str) -> bool:
    """Whether ``key`` of an unresolved ``cfg`` may still change in the resolution."""
    if key in ("SOLVER.MAX_ITER", "SOLVER.STEPS"):  # from SOLVER.EPOCH_SCHEDULE, if stated
        schedule = cfg.SOLVER.get("EPOCH_SCHEDULE")
        return schedule is not None and schedule.get("EPOCHS", 0) > 0
    if key.startswith("MODEL.ROI_BOX_HEAD.FASA.") and key.endswith(("START_ITER", "ADAPT_PERIOD")):
        return cfg.MODEL.ROI_BOX_HEAD.FASA.get(key.rsplit(".", 1)[1], 0) < 0  # -1: one epoch
    return False


def _flat(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_resume_config(cfg, resolved: bool = True) -> None:
    """Refuse to resume into an OUTPUT_DIR whose saved ``config.yaml`` (the run there) differs
    from ``cfg`` in anything that changes the model, the data or the schedule: resuming would
    continue another run's checkpoint with this config, then overwrite its files.

    Args:
        cfg: this run's config.
        resolved: whether ``cfg``'s training-set facts are resolved (else the keys the
            resolution fills in are not compared yet).

    Raises:
        RunConfigError: naming the first differing key, both values and the fix.
    """
    saved_file = os.path.join(cfg.OUTPUT_DIR, "config.yaml") if cfg.OUTPUT_DIR else ""
    if not saved_file or not os.path.isfile(saved_file):
        return
    fix = (
        "use another OUTPUT_DIR for this config (MODEL.WEIGHTS set to a checkpoint there "
        "to start from it), or resume with the config that run used "
        f"(--config-file {saved_file})"
    )
    try:
        with open(saved_file, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        problem = " ".join(str(e).split())[:200]
        raise RunConfigError(f"--resume: cannot read {saved_file} ({problem}); {fix}.") from None
    if not isinstance(saved, dict):
        raise RunConfigError(f"--resume: {saved_file} is not a saved config; {fix}.")
    old, new = _flat(saved), _flat(yaml.safe_load(cfg.dump()))
    for key, value in new.items():
        if key not in old or _under(key, _RESUME_MAY_CHANGE) or _under(key, _RESOLVED):
            continue
        if not resolved and _unresolved(cfg, key):
            continue
        was = old[key]
        if isinstance(was, (list, tuple)) and isinstance(value, (list, tuple)):
            was, value = list(was), list(value)
        if was != value:
            raise RunConfigError(
                f"--resume: the run in {cfg.OUTPUT_DIR} was started with {key} {was!r}, this "
                f"config has {value!r}; resuming would continue that run with another model "
                f"or schedule. Nothing was changed; {fix}."
            )


def check_eval_weights(checkpointer, cfg, resume: bool) -> str:
    """Load the weights ``--eval-only`` evaluates, or refuse to evaluate an untrained model.

    With ``resume``, the newest readable checkpoint in OUTPUT_DIR; else MODEL.WEIGHTS. An
    error when there is none, or when it leaves some of the model's parameters at their
    initialisation (e.g. MODEL.WEIGHTS is the backbone's ImageNet initialisation).

    Returns:
        the loaded file.

    Raises:
        RunConfigError: naming what is missing and the fix.
    """
    if resume:
        path = checkpointer.get_checkpoint_file()
        if not path:
            raise RunConfigError(
                f"--eval-only --resume: no readable checkpoint in {cfg.OUTPUT_DIR} (see the "
                "warnings above); give the model to evaluate with MODEL.WEIGHTS path.pth."
            )
    else:
        path = cfg.MODEL.WEIGHTS
        if not path:
            raise RunConfigError(
                "--eval-only needs the trained model: set MODEL.WEIGHTS "
                "path/to/model_final.pth (or use --resume to take OUTPUT_DIR's checkpoint)."
            )
    try:
        checkpointer.load(path, checkpointables=[])
    except (OSError, AssertionError, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        message = " ".join(str(e).split())[:300]
        raise RunConfigError(f"--eval-only: cannot read {path}: {message}") from None
    untrained = checkpointer.untrained_parameters()
    if untrained:
        raise RunConfigError(
            f"--eval-only: {path} holds no weights for {len(untrained)} of the model's "
            f"parameters (e.g. {untrained[0]}): it is not a trained model of this config, and "
            "evaluating it would report the AP of an untrained detector. Set MODEL.WEIGHTS to "
            "the trained checkpoint (OUTPUT_DIR/model_final.pth)."
        )
    return path


def setup(args):
    """:func:`load_config`, its training-set facts resolved
    (:func:`iif_d2.resolve_training_set`: class counts, FASA's held-out images, epoch length),
    frozen, and detectron2's ``default_setup`` (logging, OUTPUT_DIR, config.yaml), with
    iif-d2's loggers writing to the same files."""
    return setup_run(args)[0]


def setup_run(args):
    """:func:`setup`, and the training dicts its resolution loaded (None if none), for
    ``Trainer(cfg, dataset_dicts=...)``: a training run loads DATASETS.TRAIN once.

    Returns:
        (cfg, dicts)
    """
    cfg, dicts = load_config(args), None
    check_run_config(cfg)
    if args.resume:  # before anything is written into the folder
        check_resume_config(cfg, resolved=False)
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        acquire_output_dir(cfg.OUTPUT_DIR)  # a second run on this folder is refused; freed at exit
        remove_stale_temporary_files(cfg.OUTPUT_DIR)
    # logging first, so that the resolution's messages reach OUTPUT_DIR/log.txt
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="iif_d2")
    if cfg.NUM_THREADS < 0:
        raise ValueError(f"NUM_THREADS {cfg.NUM_THREADS} must be >= 0 (0: torch's default).")
    if cfg.NUM_THREADS:
        torch.set_num_threads(cfg.NUM_THREADS)
    logger.info(
        "Intra-op CPU threads: %d (NUM_THREADS %d, OMP_NUM_THREADS %s); CPU: %s, torch %s with "
        "%s kernels (the same seed repeats bit for bit only with the same threads and kernels).",
        torch.get_num_threads(),
        cfg.NUM_THREADS,
        os.environ.get("OMP_NUM_THREADS", "unset"),
        cpu_model(),
        torch.__version__,
        cpu_capability(),
    )
    if needs_class_counts(cfg) or cfg.MODEL.ROI_BOX_HEAD.FASA.ENABLED:
        cfg, dicts = resolve_training_run(
            cfg, training=not getattr(args, "eval_only", False), resume=args.resume
        )
    if args.resume:  # the resolved schedule too, before default_setup rewrites config.yaml
        check_resume_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg, dicts
