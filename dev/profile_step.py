#!/usr/bin/env python
"""Where a training step's time goes: forward / backward / optimizer, and the top operators.

Builds the config's model, optimizer and data loader with iif-d2's Trainer (as train_net.py
does), runs ``--warmup`` steps, times ``--steps`` steps (wall and process CPU seconds per
step, split into forward, backward and optimizer), then profiles ``--profile-steps`` more with
torch.profiler and prints the operators with the most self CPU time. Data loading is timed
apart (the batch is fetched before the clock starts).

    python dev/profile_step.py --config-file configs/SynthLT-InstanceSegmentation/mask_rcnn_R_18_FPN_iif.yaml
    python dev/profile_step.py --config-file ... --threads 1 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 64
    python dev/profile_step.py --config-file ... MODEL.WEIGHTS output/demo/model_final.pth
    python dev/profile_step.py --config-file ... --by-shape   # which convolution costs

A model's first steps are cheaper than a trained one's: its proposals rarely overlap the ground
truth, so the mask head sees few positive RoIs. Pass MODEL.WEIGHTS (a trained checkpoint) to
time the steps that dominate a run.

CPU times depend on the thread count (``--threads``, pinned) and on what else runs on the
machine: compare settings in the same quiet session.
"""  # noqa: E501

import argparse
import logging
import os
import sys
import tempfile
import time

from iif_d2.utils.upstream_warnings import hide_upstream_deprecations

hide_upstream_deprecations()  # before detectron2 is imported


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (cores)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (20)")
    p.add_argument("--profile-steps", type=int, default=5, help="profiled steps (5; 0: none)")
    p.add_argument("--top", type=int, default=15, help="operators listed (15)")
    p.add_argument(
        "--by-shape", action="store_true", help="list operators per input shape (which conv costs)"
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.profile_steps < 0 or args.threads < 1:
        p.error("--steps and --threads must be >= 1, --warmup and --profile-steps >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch
    from detectron2.utils.events import EventStorage

    from iif_d2.engine.trainer import Trainer, setup

    with tempfile.TemporaryDirectory() as out:
        opts = [*args.opts, "NUM_THREADS", str(args.threads), "OUTPUT_DIR", out]
        ns = argparse.Namespace(config_file=args.config_file, opts=opts, resume=False)
        cfg = setup(ns)
        logging.getLogger("detectron2").setLevel(logging.WARNING)
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)  # MODEL.WEIGHTS: a trained model's step
        model, optimizer = trainer.model, trainer.optimizer
        model.train()
        batches = iter(trainer.data_loader)

        def step():
            data = next(batches)
            t0 = time.perf_counter()
            loss = sum(model(data).values())
            t1 = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            t2 = time.perf_counter()
            optimizer.step()
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        with EventStorage(0):
            for _ in range(args.warmup):
                step()
            cpu0 = time.process_time()
            parts = np.array([step() for _ in range(args.steps)])
            cpu = (time.process_time() - cpu0) / args.steps
            fwd, bwd, opt = parts.mean(0)
            total = parts.sum(1).mean()
            print(
                f"{os.path.basename(args.config_file)} {' '.join(args.opts)}\n"
                f"threads {torch.get_num_threads()}, {args.steps} steps: {total:.3f} s/step wall "
                f"(forward {fwd:.3f} = {fwd / total:.0%}, backward {bwd:.3f} = {bwd / total:.0%}, "
                f"optimizer {opt:.3f} = {opt / total:.0%}), {cpu:.3f} CPU s/step",
                flush=True,
            )
            if args.profile_steps:
                from torch.profiler import ProfilerActivity, profile

                cpu = [ProfilerActivity.CPU]
                with profile(activities=cpu, record_shapes=args.by_shape) as prof:
                    for _ in range(args.profile_steps):
                        step()
                averages = prof.key_averages(group_by_input_shape=args.by_shape)
                table = averages.table(sort_by="self_cpu_time_total", row_limit=args.top)
                print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
