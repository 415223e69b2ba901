#!/usr/bin/env python
"""Train and evaluate detectron2 models with Inverse Image Frequency: iif-d2's trainer command
(:mod:`iif_d2.train_net`; installed as ``iif-train``), with detectron2's ``train_net.py`` flags.

    python train_net.py --num-gpus 8 --config-file configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe_torchvision.yaml
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume       # continue from OUTPUT_DIR/last_checkpoint
"""  # noqa: E501

import sys

from iif_d2.train_net import USER_ERRORS, check_launch_args, main, run  # noqa: F401

if __name__ == "__main__":
    sys.exit(run())
