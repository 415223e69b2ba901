"""``Trainer``: detectron2's DefaultTrainer with IIF's evaluators, decoupled training and
multi-process CPU training; ``setup`` builds the config the way detectron2's tools do."""

import argparse
import functools
import logging
import os

import torch
from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from iif_d2.data.heldout import build_heldout_loader
from iif_d2.data.loader import ResumableTrainLoader, build_resumable_train_loader, training_dicts
from iif_d2.data.samplers import build_train_sampler
from iif_d2.data.training_set import needs_class_counts, resolve_training_run
from iif_d2.engine.checkpoint import IIFCheckpointer
from iif_d2.engine.config_files import (
    RunConfigError,
    check_checkpoint_config,
    check_run_config,
    load_config,
    local_config_path,
)
from iif_d2.engine.hooks import FASAHook, RngStateGatherer, RunCheckpointer
from iif_d2.engine.run_folder import check_resume_config, remove_stale_temporary_files
from iif_d2.engine.run_lock import acquire_output_dir
from iif_d2.evaluation import build_evaluator
from iif_d2.modeling.config_check import check_settings_used, num_classes_problem
from iif_d2.modeling.fasa import FASA
from iif_d2.utils.compat import cpu_safe_ddp
from iif_d2.utils.io import same_file, write_json_atomic
from iif_d2.utils.machine import cpu_capability, cpu_model
from iif_d2.utils.rng import rng_preserved, rng_state, set_rng_state

__all__ = [
    "Trainer",
    "checkpointer_for",
    "freeze_all_but_box_classifier",
    "setup",
    "setup_run",
]

logger = logging.getLogger(__name__)
# detectron2 main's DefaultTrainer saves and loads its inner trainer ("_trainer"); v0.6 does not
_UPSTREAM_SAVES_TRAINER = "state_dict" in DefaultTrainer.__dict__


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
        iteration = state_dict.get("iteration")
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < -1:
            raise ValueError(
                f"its trainer state's iteration {iteration!r} is not an iteration number: it "
                "is not a checkpoint of a train_net.py run; start a new run with MODEL.WEIGHTS "
                "set to it"
            )
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
            if resume and self.checkpointer.has_checkpoint():
                last = self.checkpointer.get_checkpoint_file()
                raise RunConfigError(
                    f"{last} holds no trainer state (iteration, optimizer, schedule): it is not "
                    "a checkpoint of a train_net.py run, so --resume cannot continue it. Start "
                    f"a new run in another OUTPUT_DIR with MODEL.WEIGHTS {last}."
                )
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
        # TorchScript's profiling executor optimises a scripted function from its second call
        # on, and the optimised graph's gradients (autodiff) differ in the last bits from eager
        # autograd's: fvcore's ``sigmoid_focal_loss_jit`` (RetinaNet's and FCOS's focal loss)
        # then trained on other bits in a resumed process, whose first calls fall at another
        # iteration. Unoptimised, every call runs eager autograd: one path, resumed or not.
        with torch.jit.optimized_execution(False):
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
        check_checkpoint_config(self.cfg)
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
    eval_only = getattr(args, "eval_only", False)
    check_run_config(cfg, training=not eval_only)
    if args.resume:  # before anything is written into the folder
        check_resume_config(cfg, resolved=False)
    config_file = local_config_path(args.config_file)
    saved = os.path.join(cfg.OUTPUT_DIR, "config.yaml")
    if not eval_only and not args.resume and same_file(config_file, saved):
        raise RunConfigError(
            f"--config-file {args.config_file} is OUTPUT_DIR's config.yaml, which the run "
            "replaces with its full config: copy it elsewhere, or give another OUTPUT_DIR."
        )
    # an evaluation in a training run's folder keeps that run's log.txt and config.yaml: its
    # own go beside its results, in OUTPUT_DIR/inference
    log_dir = cfg.OUTPUT_DIR
    if eval_only and os.path.isfile(saved):
        log_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    if comm.is_main_process() and cfg.OUTPUT_DIR:
        acquire_output_dir(cfg.OUTPUT_DIR)  # a second run on this folder is refused; freed at exit
        remove_stale_temporary_files(cfg.OUTPUT_DIR)
    # logging first, so that the resolution's messages reach OUTPUT_DIR/log.txt
    setup_logger(output=log_dir, distributed_rank=comm.get_rank(), name="iif_d2")
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
    setup_cfg = cfg
    if log_dir != cfg.OUTPUT_DIR:
        setup_cfg = cfg.clone()
        setup_cfg.defrost()
        setup_cfg.OUTPUT_DIR = log_dir
    # detectron2 logs the config file's text: the local file of an iif_d2:// config
    default_setup(setup_cfg, argparse.Namespace(**{**vars(args), "config_file": config_file}))
    return cfg, dicts
