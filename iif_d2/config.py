"""Config keys of iif-d2. With the defaults, every model is exactly detectron2's.

Keys renamed in this release keep working for one release: :func:`apply_deprecated_keys` moves a
value set under an old name to its new key, with a warning naming the new key.
"""

import logging

from detectron2.config import CfgNode as CN

from iif_d2.calibration import FRACAL_LAMBDA, FRACAL_MAX_GRID, FRACAL_VARIANT, NORCAL_GAMMA

__all__ = ["add_iif_config", "apply_deprecated_keys", "refuse_deprecated_keys", "DEPRECATED_KEYS"]

logger = logging.getLogger(__name__)


def add_iif_config(cfg):
    """Add iif-d2's keys to a detectron2 config (in place).

    Registration is separate: ``import iif_d2.modeling`` registers iif-d2's components with
    detectron2's registries (as ``import point_rend`` does), so that a config naming them
    builds.

    Args:
        cfg (CfgNode): a config from ``detectron2.config.get_cfg()``.

    Returns:
        cfg
    """
    _add_class_counts(cfg)
    _add_box_iif(cfg)
    _add_additive_margin(cfg)
    _add_calibration(cfg)
    _add_retinanet_iif(cfg)
    _add_fcos(cfg)
    _add_cosine_classifier(cfg)
    _add_normalized_mask_head(cfg)
    _add_head_init(cfg)
    _add_fasa(cfg)
    _add_heldout(cfg)
    _add_repeat_factor_sampling(cfg)
    _add_lvis_eval(cfg)
    _add_threads(cfg)
    _add_kernels(cfg)
    _add_checkpoints(cfg)
    _add_mask_inference(cfg)
    _add_epoch_schedule(cfg)
    return cfg


def _add_class_counts(_C):
    # ---------------------------------------------------------------------------------------
    # Per-class image and instance counts of the training set, read by every component built
    # on class frequencies: IIF (ROI, RetinaNet, FCOS), the additive margins and FASA.
    # Resolved once per run before the model is built (iif_d2.data.training_set): with SOURCE
    # "dataset" or "json", the counts are computed on the main rank, saved as
    # OUTPUT_DIR/iif_class_stats.json, and SOURCE / FILE then point to that file, so the saved
    # config.yaml evaluates without the training annotations.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.CLASS_COUNTS = CN()
    # "dataset" = counted on the dicts of DATASETS.TRAIN, all of them (before FASA's hold-out),
    # after FILTER_EMPTY_ANNOTATIONS, crowd boxes excluded; "json" = the image_count /
    # instance_count fields of the registered training dataset's LVIS json; "file" = FILE.
    _C.MODEL.CLASS_COUNTS.SOURCE = "dataset"
    # Counts file for SOURCE "file": a CSV with image_count and instance_count columns (one row
    # per class, in contiguous-id order; a "# num_images: N" line gives K), a run's
    # OUTPUT_DIR/iif_class_stats.json, a `python -m iif_d2.cli --save` JSON, or an LVIS/COCO
    # json. "iif_d2://lvis_v1_train.csv" and "iif_d2://coco_train2017.csv" name the LVIS v1 /
    # COCO train counts shipped here.
    _C.MODEL.CLASS_COUNTS.FILE = ""


def _add_box_iif(_C):
    # ---------------------------------------------------------------------------------------
    # Inverse Image Frequency on the box classifier (IIFFastRCNNOutputLayers).
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.IIF = CN()
    # Switch. False: the box predictor is detectron2's FastRCNNOutputLayers, bit for bit.
    _C.MODEL.ROI_BOX_HEAD.IIF.ENABLED = False
    # Where the weights w act. "end_to_end": loss CE(softmax(w * z), y) and scores
    # softmax(w * z) at inference; "post_process": plain softmax CE in training, softmax(w * z)
    # only at inference (paper Eq. 14).
    _C.MODEL.ROI_BOX_HEAD.IIF.MODE = "end_to_end"
    _add_weight_keys(_C.MODEL.ROI_BOX_HEAD.IIF)
    # Initialisation of the box classifier cls_score of IIF's box predictor: "default" =
    # detectron2's N(0, 0.01^2), "constant" = weights 0.001 and bias 0, as the authors'
    # plain-linear IIF runs. It acts whenever the ROI heads are iif-d2's, also with IIF.ENABLED
    # False (a softmax baseline with the authors' initialisation).
    _C.MODEL.ROI_BOX_HEAD.IIF.CLS_SCORE_INIT = "default"
    # Decoupled training, stage 2 (paper Sec. VI-B): freeze every parameter except the box
    # classifier(s) cls_score; pair it with MODEL.WEIGHTS = a softmax stage-1 checkpoint.
    _C.MODEL.ROI_BOX_HEAD.TRAIN_ONLY_CLASSIFIER = False


def _add_additive_margin(_C):
    # ---------------------------------------------------------------------------------------
    # Additive-margin baselines on the same box predictor (paper Fig. 1 comparison). They use
    # MODEL.CLASS_COUNTS with the FREQUENCY and NORMALIZER of MODEL.ROI_BOX_HEAD.IIF, and
    # cannot be combined with IIF.ENABLED.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN = CN()
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.ENABLED = False
    # "balanced_softmax": loss CE(z + ln f_c); "logit_adjustment": loss CE(z + TAU ln p_c);
    # "logit_adjustment_posthoc": plain loss, scores softmax(z - TAU ln p_c). Background
    # margin 0 in all three; plain z at test for the two loss variants.
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.TYPE = "balanced_softmax"
    # tau of logit adjustment (Menon et al. 2021); unused by balanced_softmax.
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.TAU = 1.0


def _add_calibration(_C):
    # ---------------------------------------------------------------------------------------
    # Post-hoc calibration of the box classifier's scores at inference (iif_d2.calibration,
    # docs/method.md "NorCal and FRACAL"); training and its losses are unchanged. Needs the
    # softmax classifier (not USE_SIGMOID_CE); excludes IIF MODE "post_process" and the
    # post-hoc logit adjustment (two post-processings); on top of end-to-end IIF it calibrates
    # softmax(w * z). Uses MODEL.CLASS_COUNTS (image counts).
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION = CN()
    # "off"; "norcal": q_c / n_c^GAMMA (Pan et al. 2021); "fracal": softmax(z + a) with the
    # VARIANT prior a, then q_c / D_c^LAMBDA (Alexandridis et al. 2025). Background kept,
    # scores renormalised over the C+1 entries.
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.MODE = "off"
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL = CN()
    # gamma of n_c^gamma (n_c: training images of class c). The paper tunes it per model; the
    # published code's default 0 changes nothing, so iif-d2 defaults to 0.6 (not a paper value).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.NORCAL.GAMMA = NORCAL_GAMMA
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL = CN()
    # lambda, the exponent of the fractal dimension D_c (the authors' fractal_l = 2).
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.LAMBDA = FRACAL_LAMBDA
    # IIF formula of the additive prior a_c = w_c - w(1/C) on image frequencies: "base10"
    # (the authors' LVIS configs), "base2" or "raw".
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.VARIANT = FRACAL_VARIANT
    # Finest grid G of the box counting (d x d grids, d = 1..G, over the normalised image);
    # the dimensions are a training-set fact saved in OUTPUT_DIR/iif_class_stats.json.
    _C.MODEL.ROI_BOX_HEAD.CALIBRATION.FRACAL.MAX_GRID = FRACAL_MAX_GRID


def _add_retinanet_iif(_C):
    # ---------------------------------------------------------------------------------------
    # Long-tail treatments of RetinaNet's sigmoid classifier (IIFRetinaNet; docs/method.md §4).
    # No background column: C weights.
    # ---------------------------------------------------------------------------------------
    _add_dense_long_tail(_C.MODEL.RETINANET)


def _add_dense_long_tail(node):
    """IIF and EFL keys of a dense detector's node (RETINANET, FCOS)."""
    node.IIF = CN()
    # Switch. False (and EFL off): the model is detectron2's, bit for bit.
    node.IIF.ENABLED = False
    _add_weight_keys(node.IIF)
    # What the weights w do: "logits" = the class logits z become w * z (loss and inference);
    # "positive_weight" = w_c weighs the positive term of the focal loss (the authors' first
    # one-stage form); "negative_suppression" = s_c = min(w) / w_c weighs the negative term of
    # class c on anchors matched to another class's object. The last two leave inference plain.
    node.IIF.RULE = "logits"
    # RULE "logits" only: "both" = w * z in the loss and at inference; "train" = in the loss
    # only; "test" = at inference only (on a model trained without IIF).
    node.IIF.APPLY_AT = "both"
    # RULE "logits", in the loss: w * z for the foreground-matched anchors only (False:
    # negatives keep their raw logits, the authors' commit 2ee11fd) or for every non-ignored
    # anchor (True, the authors' latest).
    node.IIF.SCALE_ALL_ANCHORS = False
    # Equalized Focal Loss (Li et al., CVPR 2022) on the same model, alone or with a RULE:
    # class c's focusing factor gamma + SCALE_FACTOR * (1 - g_c) and weighting factor
    # (that gamma) / gamma, g_c = accumulated positive / negative gradient of c, in [0, 1].
    node.EFL = CN()
    node.EFL.ENABLED = False
    # S >= 0: 0 gives the focal loss; 8 is the paper's value.
    node.EFL.SCALE_FACTOR = 8.0


def _add_fcos(_C):
    # ---------------------------------------------------------------------------------------
    # IIF on FCOS (IIFFCOS, META_ARCHITECTURE "IIFFCOS"). detectron2 ships FCOS as a LazyConfig
    # only; these keys are its arguments (defaults = detectron2's configs/common/models/fcos.py).
    # ---------------------------------------------------------------------------------------
    _C.MODEL.FCOS = CN()
    _C.MODEL.FCOS.NUM_CLASSES = 80
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Convolutions in each of the classification and regression towers.
    _C.MODEL.FCOS.NUM_CONVS = 4
    # Normalisation in the towers: "GN" (detectron2's FCOS), "" for none, "BN", "SyncBN", ...
    _C.MODEL.FCOS.HEAD_NORM = "GN"
    # Initial foreground probability of the classifier bias.
    _C.MODEL.FCOS.PRIOR_PROB = 0.01
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    # Radius (in strides) of a box's centre region, where anchor points are positives.
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    # Inference: threshold on sqrt(class score * centerness), top-k candidates per level, NMS.
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    # IIF and EFL, as MODEL.RETINANET.IIF and MODEL.RETINANET.EFL.
    _add_dense_long_tail(_C.MODEL.FCOS)


def _add_cosine_classifier(_C):
    # ---------------------------------------------------------------------------------------
    # Cosine box classifier (paper Table XV, docs/method.md §3): z_c = SCALE * cos(x, W_c) + b_c
    # over all C+1 rows, background included, bias kept. Works with and without IIF.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.COSINE = CN()
    _C.MODEL.ROI_BOX_HEAD.COSINE.ENABLED = False
    # The scale s: 8 in the IIF recipe, 20 for softmax baselines.
    _C.MODEL.ROI_BOX_HEAD.COSINE.SCALE = 20.0


def _add_normalized_mask_head(_C):
    # ---------------------------------------------------------------------------------------
    # Normalised mask predictor, used by MODEL.ROI_MASK_HEAD.NAME
    # "NormalizedMaskRCNNConvUpsampleHead": a 1x1 cosine convolution (per-pixel features
    # L2-normalised over channels, filters L2-normalised) times SCALE, plus the bias.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_MASK_HEAD.NORMALIZED = CN()
    _C.MODEL.ROI_MASK_HEAD.NORMALIZED.SCALE = 20.0


def _add_head_init(_C):
    # ---------------------------------------------------------------------------------------
    # Initialisation of the ROI heads' layers, applied when iif-d2's ROI heads are built (box
    # head FCs, box regressor, mask head; the box classifier is ROI_BOX_HEAD.IIF.CLS_SCORE_INIT).
    # "detectron2": detectron2's own (Caffe2 Xavier FCs, regressor and mask predictor
    # N(0, 0.001^2)). "authors": the authors' plain-linear IIF configs (a box-head init_cfg of
    # their own, which turns mmdet's defaults off): FCs and regressor keep PyTorch's nn.Linear
    # default. "mmdet": mmdet 2.x's defaults, as the authors' FASA / recipe configs get them:
    # FCs Xavier normal, regressor N(0, 0.001^2). Both: mask convs, deconv and predictor
    # Kaiming normal (fan_out, ReLU), bias 0. Needs a 2-FC box head (NUM_CONV 0).
    # ---------------------------------------------------------------------------------------
    _C.MODEL.HEAD_INIT = CN()
    _C.MODEL.HEAD_INIT.SCHEME = "detectron2"


def _add_fasa(_C):
    # ---------------------------------------------------------------------------------------
    # FASA: feature augmentation and sampling adaptation (Zang et al., ICCV 2021;
    # docs/method.md §3) on the box classifier. Per-class statistics of the box-head features
    # of positive RoIs live in the box predictor (synchronised across ranks); virtual features
    # drawn from them go through the classifier with the same loss. FASAHook adapts the
    # sampling rates.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.FASA = CN()
    _C.MODEL.ROI_BOX_HEAD.FASA.ENABLED = False
    # Weight of the virtual features' classification loss (averaged over them).
    _C.MODEL.ROI_BOX_HEAD.FASA.LOSS_WEIGHT = 0.1
    # EMA weight of the new batch statistics: stat = (1 - MOMENTUM) * stat + MOMENTUM * batch.
    _C.MODEL.ROI_BOX_HEAD.FASA.MOMENTUM = 0.1
    # Iteration from which virtual features are drawn; -1: one epoch (the authors' 2nd epoch).
    # An epoch = the training images (FASA's held-out ones removed) at SOLVER.IMS_PER_BATCH, each
    # counted as often as repeat-factor sampling repeats it, as the authors' epochs count. -1 is
    # resolved into iterations before the model is built (iif_d2.data.training_set).
    _C.MODEL.ROI_BOX_HEAD.FASA.START_ITER = -1
    # Iterations between two adaptations of the sampling rates; -1: one epoch (resolved as
    # START_ITER); 0: never (then no image is held out).
    _C.MODEL.ROI_BOX_HEAD.FASA.ADAPT_PERIOD = -1
    # A cluster whose held-out loss went up gets s * (1 - ADAPT_STEP), down s * (1 + ADAPT_STEP).
    # A cluster's loss is the sum of its classes' mean held-out losses (every class counts
    # equally; the authors weight classes by their held-out instance counts).
    _C.MODEL.ROI_BOX_HEAD.FASA.ADAPT_STEP = 0.1
    # How classes are grouped for the adaptation: "affinity_propagation" on the seen classes'
    # feature means (the algorithm the authors use, implemented here in torch, on negative
    # squared distances; unseen classes stay alone) or "none" (each class on its own).
    _C.MODEL.ROI_BOX_HEAD.FASA.CLUSTERING = "affinity_propagation"
    # The released code's behaviour, as options (docs/method.md §9 argues the defaults):
    # a class with a single feature in a batch: "keep" its variance, or "authors": blend the
    # variance 0 in (stat = (1 - m) var + m * 0);
    _C.MODEL.ROI_BOX_HEAD.FASA.SINGLE_INSTANCE_VARIANCE = "keep"
    # what affinity propagation clusters: "negative_squared_distances" of the seen classes'
    # means (a similarity, as the algorithm defines it), or "authors": the positive squared
    # distances of every class's mean, unseen (all-zero) ones included.
    _C.MODEL.ROI_BOX_HEAD.FASA.CLUSTERING_INPUT = "negative_squared_distances"
    # the held-out loss per class: "gt_boxes_class_mean", the mean classification loss of its
    # ground-truth boxes (test resize: DATASETS.HELDOUT images at INPUT.MIN_SIZE_TEST), or
    # "authors": its summed loss over the RoIs the training step would sample (RPN proposals
    # at the training top-k plus the ground truth, ROI_HEADS.BATCH_SIZE_PER_IMAGE at
    # POSITIVE_FRACTION), divided by the number of all those RoIs, background included (a
    # class weighted by its RoI count), on images with the training augmentation.
    _C.MODEL.ROI_BOX_HEAD.FASA.ADAPTATION_LOSS = "gt_boxes_class_mean"
    # The initial sampling rates s_c are proportional to 1 / instance count (MODEL.CLASS_COUNTS,
    # also when IIF itself is off), normalised to sum 1.


def _add_heldout(_C):
    # ---------------------------------------------------------------------------------------
    # Held-out images on which FASA measures its per-class loss (used when FASA is on and
    # ADAPT_PERIOD != 0). Without NAMES: FRACTION of the training images with annotations (at
    # most MAX_IMAGES) are removed from training, drawn along a permutation with a fixed seed
    # (0, independent of SEED, so a resumed run holds out the same images) that skips every
    # image holding the last training image of a class: no class loses all its training
    # images. The class counts stay those of the full training set. NAMES, if set, are used
    # instead and nothing is removed; naming an evaluation split there is the authors' choice
    # (LVIS val) and leaks it into training.
    # ---------------------------------------------------------------------------------------
    _C.DATASETS.HELDOUT = CN()
    _C.DATASETS.HELDOUT.FRACTION = 0.02
    _C.DATASETS.HELDOUT.MAX_IMAGES = 1000
    _C.DATASETS.HELDOUT.NAMES = ()
    # Resolved before the model is built: a json with the held-out image ids (written to
    # OUTPUT_DIR/iif_heldout.json). Leave empty.
    _C.DATASETS.HELDOUT.IMAGE_IDS_FILE = ""

    _add_deprecated_keys(_C)


def _add_repeat_factor_sampling(_C):
    # ---------------------------------------------------------------------------------------
    # Repeat-factor sampling (DATALOADER.SAMPLER_TRAIN "RepeatFactorTrainingSampler", with
    # DATALOADER.REPEAT_THRESHOLD t): r(c) = max(1, sqrt(t / f(c))), r(I) = max over I's classes.
    # ---------------------------------------------------------------------------------------
    if "REPEAT_SQRT" not in _C.DATALOADER:  # detectron2 v0.6 lacks main's key
        # True: r(c) = max(1, sqrt(t / f(c))); False: max(1, t / f(c)).
        _C.DATALOADER.REPEAT_SQRT = True
    _C.DATALOADER.REPEAT_FACTOR = CN()
    # "stochastic": each epoch repeats image I floor(r) times plus once more with probability
    # r - floor(r) (detectron2's); "ceil": ceil(r(I)) times every epoch (the authors').
    _C.DATALOADER.REPEAT_FACTOR.ROUNDING = "stochastic"


def _add_lvis_eval(_C):
    # ---------------------------------------------------------------------------------------
    # LVIS evaluation engine: "fast" (iif_d2.lvis_eval: lvis-api's exact metrics in bounded
    # memory) or "lvis-api" (detectron2's LVISEvaluator running lvis==0.5.3, the reference).
    # ---------------------------------------------------------------------------------------
    _C.TEST.LVIS_EVAL_ENGINE = "fast"
    # Fast engine: also write lvis_instances_results.json (~0.5 GB per 5,000 images).
    _C.TEST.LVIS_EVAL_SAVE_RESULTS = False
    # Fast engine: also report AP-fixed and AP-pool (Dave et al. 2021; 10,000 detections per
    # class over the dataset) of the same detections. Pooled AP ranks every class's detections
    # together, so it measures how comparable the scores of different classes are.
    _C.TEST.LVIS_EVAL_FIXED_POOLED = False
    # AP-fixed inference (Dave et al. 2021), fast engine: AP-fixed and AP-pool on each class's
    # DETS_PER_CLASS best detections over the dataset with no cap per image, as the paper's
    # inference gives them (the evaluator keeps a running top per class: bounded memory). The
    # model must then keep every detection above its score threshold: TEST.DETECTIONS_PER_IMAGE
    # -1 for R-CNN models (RetinaNet/FCOS: a large number, e.g. 100000; their -1 drops one), and
    # a lower MODEL.ROI_HEADS.SCORE_THRESH_TEST gives more candidates. The standard metrics come
    # from the same pass: each image's STANDARD_DETECTIONS_PER_IMAGE best detections scoring
    # above STANDARD_SCORE_THRESH (the standard inference's TEST.DETECTIONS_PER_IMAGE and score
    # threshold), which are a standard pass's detections (per-class NMS never lets a lower
    # score remove a higher one).
    _C.TEST.AP_FIXED = CN()
    _C.TEST.AP_FIXED.ENABLED = False
    # K, detections per class over the dataset (also for TEST.LVIS_EVAL_FIXED_POOLED).
    _C.TEST.AP_FIXED.DETS_PER_CLASS = 10000
    _C.TEST.AP_FIXED.STANDARD_DETECTIONS_PER_IMAGE = 300
    _C.TEST.AP_FIXED.STANDARD_SCORE_THRESH = 0.0001
    # Adaptive per-class score floors (the authors' per-class thresholds, made exact): the
    # evaluator keeps each class's running DETS_PER_CLASS-th best score, and iif-d2's R-CNN ROI
    # heads drop, before the mask head, every detection that is neither in the standard cut nor
    # at or above its class's floor (it cannot be in the class's top over the dataset): every
    # metric is unchanged and masks are computed and pasted only for the kept ones. False: a
    # mask for every uncapped detection. Dense detectors (RetinaNet/FCOS) and upstream's ROI
    # heads ignore it.
    _C.TEST.AP_FIXED.ADAPTIVE_FLOOR = True


def _add_threads(_C):
    # ---------------------------------------------------------------------------------------
    # Intra-op CPU threads of each process (torch.set_num_threads), set and logged by
    # iif_d2.engine.trainer.setup; 0 = torch's default (OMP_NUM_THREADS if set, else the cores). CPU
    # results depend on it (the reduction order changes): pin it wherever numbers are compared.
    # They also depend on the CPU's kernel set (AVX2, AVX-512, AMX: logged beside the threads),
    # so bits repeat across machines only where both match.
    # ---------------------------------------------------------------------------------------
    _C.NUM_THREADS = 0


def _add_kernels(_C):
    # ---------------------------------------------------------------------------------------
    # How the model's maths runs: the same results up to float rounding, at another speed.
    # CHANNELS_LAST: IIFGeneralizedRCNN keeps its conv weights and the image batch in the
    # channels-last memory format, oneDNN's native one on CPU (dev/benchmark_speed.py --task kernels
    # times both kernels on the SynthLT model). Needs META_ARCHITECTURE
    # "IIFGeneralizedRCNN".
    # ROI_ALIGN: "torchvision" (detectron2's ROIAlign) or "matmul" (iif_d2.modeling.roi_align:
    # the same values as two matrix products per image, with a multi-threaded backward; faster
    # on small feature maps such as SynthLT's, slower on LVIS-sized ones). Needs iif-d2's ROI
    # heads and POOLER_TYPE "ROIAlign" or "ROIAlignV2".
    # ---------------------------------------------------------------------------------------
    _C.MODEL.KERNELS = CN()
    _C.MODEL.KERNELS.CHANNELS_LAST = False
    _C.MODEL.KERNELS.ROI_ALIGN = "torchvision"


def _add_checkpoints(_C):
    # ---------------------------------------------------------------------------------------
    # Checkpoints (iif_d2.engine.checkpoint.IIFCheckpointer: loading runs no code, atomic writes).
    # ---------------------------------------------------------------------------------------
    # False: a tensor of MODEL.WEIGHTS (or of a resumed checkpoint) whose shape differs from the
    # model's, e.g. a checkpoint for another number of classes, is an error. True: such tensors
    # are skipped with a warning and keep their initialisation, as detectron2 does (fine-tuning
    # from a model trained on another class set).
    _C.MODEL.WEIGHTS_ALLOW_SHAPE_MISMATCH = False
    # Periodic checkpoints (model_XXXXXXX.pth) kept on disk: the newest N at or before the
    # current iteration, counted over every such file in OUTPUT_DIR (those written before a
    # resume too); 0 = all (detectron2's behaviour). model_final.pth and the checkpoint
    # last_checkpoint names are always kept; the last iteration writes model_final.pth only.
    _C.SOLVER.CHECKPOINTS_KEPT = 3


def _add_mask_inference(_C):
    # ---------------------------------------------------------------------------------------
    # Mask post-processing at test time (IIFGeneralizedRCNN).
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_MASK_HEAD.INFERENCE = CN()
    # Binarisation threshold of the pasted soft masks. detectron2 hard-codes 0.5; the paper's
    # LVIS recipe uses 0.4.
    _C.MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD = 0.5


def _add_epoch_schedule(_C):
    # ---------------------------------------------------------------------------------------
    # The schedule in epochs, counted as the paper's code counts them: one epoch is one pass
    # over the images the loader draws from, after FASA's hold-out, each image counted as often
    # as repeat-factor sampling repeats it (ceil(r) with DATALOADER.REPEAT_FACTOR.ROUNDING
    # "ceil", as mmdetection's ClassBalancedDataset). With EPOCHS > 0, the run's training-set
    # facts (iif_d2.data.training_set, once per run, before the model is built) set
    # SOLVER.MAX_ITER = EPOCHS x the iterations of one epoch at SOLVER.IMS_PER_BATCH, and
    # SOLVER.STEPS = each of STEPS x the same; both are logged and saved in
    # OUTPUT_DIR/config.yaml; the MAX_ITER / STEPS of the config files are replaced (on the
    # command line, setting them beside EPOCHS is an error). SOLVER.WARMUP_ITERS stays in
    # iterations; FASA's START_ITER / ADAPT_PERIOD -1 are one epoch of the same length.
    # 0 = off: SOLVER.MAX_ITER / STEPS as given.
    # ---------------------------------------------------------------------------------------
    _C.SOLVER.EPOCH_SCHEDULE = CN()
    _C.SOLVER.EPOCH_SCHEDULE.EPOCHS = 0
    # epochs after which the learning rate is multiplied by SOLVER.GAMMA, e.g. (16, 22) of 24
    _C.SOLVER.EPOCH_SCHEDULE.STEPS = ()


def _add_weight_keys(node):
    """The keys that define the weights, shared by every IIF node."""
    # Weight formula (paper Table III): "raw" ln(K/f), "smooth" ln((K+1)/(f+1))+1, "relative"
    # ln((K-f)/f) (alias "prob"), "base2" log2(K/f), "base10" log10(K/f), "gombit"
    # -ln(-ln(1-p)), "normit" -Phi^-1(p); p = f/K.
    node.VARIANT = "raw"
    # Frequency f_c: "image" = training images containing class c (IIF), "instance" = instances
    # of c (IOF, the authors' "*_obj" variants; the LVIS recipe uses base10 IOF).
    node.FREQUENCY = "image"
    # K, the total: "total" = number of training images (IIF) or of instances (IOF), as the
    # authors' released weights; "sum" = sum_c f_c, as the paper's Eq. 11 writes it.
    node.NORMALIZER = "total"
    # The class counts come from MODEL.CLASS_COUNTS.
    # Accept weights <= 0 ("relative"/"normit" on classes with p >= 0.5, e.g. COCO person).
    # A negative weight flips the sign of that class's logit: leave False unless you mean it.
    node.ALLOW_NONPOSITIVE_WEIGHTS = False


# old key -> new key; the old keys' defaults mean "not set" (see _add_deprecated_keys)
DEPRECATED_KEYS = {
    **{
        f"MODEL.{node}.IIF.COUNTS_SOURCE": "MODEL.CLASS_COUNTS.SOURCE"
        for node in ("ROI_BOX_HEAD", "RETINANET", "FCOS")
    },
    **{
        f"MODEL.{node}.IIF.COUNTS_FILE": "MODEL.CLASS_COUNTS.FILE"
        for node in ("ROI_BOX_HEAD", "RETINANET", "FCOS")
    },
    "MODEL.ROI_BOX_HEAD.IIF.TRAIN_ONLY_CLASSIFIER": "MODEL.ROI_BOX_HEAD.TRAIN_ONLY_CLASSIFIER",
    "MODEL.ROI_BOX_HEAD.FASA.HELDOUT_FRACTION": "DATASETS.HELDOUT.FRACTION",
    "MODEL.ROI_BOX_HEAD.FASA.HELDOUT_MAX_IMAGES": "DATASETS.HELDOUT.MAX_IMAGES",
    "MODEL.ROI_BOX_HEAD.FASA.HELDOUT_DATASETS": "DATASETS.HELDOUT.NAMES",
}
# a value no user sets, of the old key's type
_UNSET = {str: "", bool: False, float: -1.0, int: -1, tuple: ()}
_OLD_TYPES = {
    "COUNTS_SOURCE": str,
    "COUNTS_FILE": str,
    "TRAIN_ONLY_CLASSIFIER": bool,
    "HELDOUT_FRACTION": float,
    "HELDOUT_MAX_IMAGES": int,
    "HELDOUT_DATASETS": tuple,
}


def _node_and_leaf(cfg, key):
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    return node, leaf


def _add_deprecated_keys(cfg):
    """The renamed keys, still accepted for one release (defaults: "not set")."""
    for old in DEPRECATED_KEYS:
        node, leaf = _node_and_leaf(cfg, old)
        node[leaf] = _UNSET[_OLD_TYPES[leaf]]


def apply_deprecated_keys(cfg):
    """Move every value set under a deprecated key to its new key (in place, unfrozen cfg).

    Raises:
        ValueError: an old key and its new key are both set, to different values, or two old
            keys of one new key disagree.
    """
    moved = {}
    for old, new in DEPRECATED_KEYS.items():
        node, leaf = _node_and_leaf(cfg, old)
        value = node[leaf]
        unset = _UNSET[_OLD_TYPES[leaf]]
        if value == unset or (isinstance(unset, tuple) and not value):
            continue
        logger.warning("Config key %s is deprecated: use %s (its value is taken).", old, new)
        new_node, new_leaf = _node_and_leaf(cfg, new)
        if new in moved and moved[new][1] != value:
            raise ValueError(
                f"Deprecated keys {moved[new][0]} = {moved[new][1]!r} and {old} = {value!r} "
                f"disagree; set only {new}."
            )
        default = _node_and_leaf(_defaults(), new)[0][new_leaf]
        current = new_node[new_leaf]
        if new not in moved and current != default and current != value:
            raise ValueError(
                f"{old} = {value!r} (deprecated) and {new} = {current!r} are both set; "
                f"set only {new}."
            )
        new_node[new_leaf] = value
        node[leaf] = unset
        moved[new] = (old, value)
    return cfg


def _defaults():
    from detectron2.config import get_cfg

    return add_iif_config(get_cfg())


def refuse_deprecated_keys(cfg) -> None:
    """Raise where ``cfg`` still holds a value under a deprecated key: it was merged without
    :func:`apply_deprecated_keys` (``train_net.py`` applies them), so a model built from it
    would silently ignore the value. Called by the models' ``from_config``.

    Raises:
        ValueError: naming the old key, its value and the new key.
    """
    for old, new in DEPRECATED_KEYS.items():
        try:
            node, leaf = _node_and_leaf(cfg, old)
        except KeyError:  # a config without iif-d2's keys
            return
        value = node.get(leaf) if hasattr(node, "get") else None
        unset = _UNSET[_OLD_TYPES[leaf]]
        if value is None or value == unset or (isinstance(unset, tuple) and not value):
            continue
        raise ValueError(
            f"{old} = {value!r} is a deprecated key and was not moved to {new}, so the model "
            f"would ignore it: set {new} instead, or call "
            "iif_d2.config.apply_deprecated_keys(cfg) after merging the config."
        )
