#!/usr/bin/env python
"""Train and evaluate detectron2 models with Inverse Image Frequency.

    python train_net.py --config-file configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_12e_iif.yaml --num-gpus 8
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --resume       # continue from OUTPUT_DIR/last_checkpoint

Multi-process training also runs on CPU (gloo): ``--num-gpus 2`` with ``MODEL.DEVICE cpu``.
"""  # noqa: E501

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported

from detectron2.engine import default_argument_parser
from detectron2.utils import comm

from iif_d2.engine.launch import launch
from iif_d2.engine.trainer import Trainer, checkpointer_for, load_config, setup


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer_for(model, cfg).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            from detectron2.evaluation import verify_results

            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    device = load_config(args).MODEL.DEVICE
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        backend="gloo" if device == "cpu" else "auto",
    )
