"""Config keys of iif-d2. With the defaults, every model is exactly detectron2's."""

from detectron2.config import CfgNode as CN

__all__ = ["add_iif_config"]


def add_iif_config(cfg):
    """Add iif-d2's keys to a detectron2 config (in place).

    Args:
        cfg (CfgNode): a config from ``detectron2.config.get_cfg()``.
    """
    _C = cfg
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
    # Initialisation of the box classifier cls_score: "default" = detectron2's N(0, 0.01^2),
    # "constant" = weights 0.001 and bias 0, as the authors' plain-linear IIF runs.
    _C.MODEL.ROI_BOX_HEAD.IIF.CLS_SCORE_INIT = "default"
    # Decoupled training, stage 2 (paper Sec. VI-B): freeze every parameter except the box
    # classifier(s) cls_score; pair it with MODEL.WEIGHTS = a softmax stage-1 checkpoint.
    _C.MODEL.ROI_BOX_HEAD.IIF.TRAIN_ONLY_CLASSIFIER = False

    # ---------------------------------------------------------------------------------------
    # Additive-margin baselines on the same box predictor (paper Fig. 1 comparison). They use
    # the class counts of MODEL.ROI_BOX_HEAD.IIF (COUNTS_SOURCE, COUNTS_FILE, FREQUENCY,
    # NORMALIZER) and cannot be combined with IIF.ENABLED.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN = CN()
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.ENABLED = False
    # "balanced_softmax": loss CE(z + ln f_c); "logit_adjustment": loss CE(z + TAU ln p_c);
    # "logit_adjustment_posthoc": plain loss, scores softmax(z - TAU ln p_c). Background
    # margin 0 in all three; plain z at test for the two loss variants.
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.TYPE = "balanced_softmax"
    # tau of logit adjustment (Menon et al. 2021); unused by balanced_softmax.
    _C.MODEL.ROI_BOX_HEAD.ADDITIVE_MARGIN.TAU = 1.0

    # ---------------------------------------------------------------------------------------
    # IIF on RetinaNet's sigmoid classifier (IIFRetinaNet). No background column: C weights.
    # ---------------------------------------------------------------------------------------
    _C.MODEL.RETINANET.IIF = CN()
    # Switch. False: IIFRetinaNet is detectron2's RetinaNet, bit for bit.
    _C.MODEL.RETINANET.IIF.ENABLED = False
    _add_weight_keys(_C.MODEL.RETINANET.IIF)
    # Focal loss on w * z for the foreground-matched anchors only (False: negatives keep their
    # raw logits, as the authors' RetinaNet) or for every anchor (True). Inference always
    # scores sigmoid(w * z).
    _C.MODEL.RETINANET.IIF.SCALE_ALL_ANCHORS = False

    # ---------------------------------------------------------------------------------------
    # Mask post-processing at test time (IIFGeneralizedRCNN).
    # ---------------------------------------------------------------------------------------
    _C.MODEL.ROI_MASK_HEAD.INFERENCE = CN()
    # Binarisation threshold of the pasted soft masks. detectron2 hard-codes 0.5; the paper's
    # LVIS recipe uses 0.4.
    _C.MODEL.ROI_MASK_HEAD.INFERENCE.MASK_THRESHOLD = 0.5
    return cfg


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
    # Where the class counts come from: "dataset" = counted on the dicts of DATASETS.TRAIN that
    # the trainer uses (after FILTER_EMPTY_ANNOTATIONS, crowd boxes excluded); "json" = the
    # image_count / instance_count fields of the registered training dataset's LVIS json;
    # "file" = COUNTS_FILE.
    node.COUNTS_SOURCE = "dataset"
    # Counts file for COUNTS_SOURCE "file": a CSV with image_count and instance_count columns
    # (one row per class, in contiguous-id order; a "# num_images: N" line gives K), a run's
    # OUTPUT_DIR/iif_class_stats.json, a `python -m iif_d2.cli --save` JSON, or an LVIS/COCO
    # json. "iif_d2://lvis_v1_train.csv" and "iif_d2://coco_train2017.csv" name the LVIS v1 /
    # COCO train counts shipped here.
    node.COUNTS_FILE = ""
    # Accept weights <= 0 ("relative"/"normit" on classes with p >= 0.5, e.g. COCO person).
    # A negative weight flips the sign of that class's logit: leave False unless you mean it.
    node.ALLOW_NONPOSITIVE_WEIGHTS = False
