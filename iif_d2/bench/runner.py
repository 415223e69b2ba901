"""One runner of ``train_net.py`` subprocesses for the demo, the SynthLT benchmark and the
rehearsal: the command, the run itself (output to a log file, polled; time to the first
iteration; peak memory from ``os.wait4``; an optional time limit), a follower that turns
detectron2's log lines into progress, and the progress line itself (a tqdm bar on a terminal,
plain lines elsewhere)."""

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

__all__ = [
    "LogFollower",
    "Progress",
    "RunResult",
    "run_process",
    "run_train_net",
    "train_config",
    "train_net_command",
]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "train_net.py")
# what detectron2 logs while it trains and evaluates (train_net.py's stdout)
ITER_LINE = re.compile(r"\biter: (\d+)\s+total_loss: ([-\d.e+na]+)")
START_LINE = re.compile(r"Starting training from iteration (\d+)")
INFERENCE_START = re.compile(r"Start inference on (\d+) (?:batches|images)")
INFERENCE_DONE = re.compile(r"Inference done (\d+)/(\d+)")
INFERENCE_END = re.compile(r"Total inference time")
PLAIN_INTERVAL_S = 30.0  # off a terminal: at most one progress line per this many seconds


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


class Progress:
    """A progress line: a tqdm bar (rate, ETA) on a terminal; elsewhere plain lines, at most one
    per ``interval`` seconds plus the last, and never a carriage return.

    Args:
        desc: what progresses ("2/3 IIF: training").
        total, unit, initial: the count to reach, its unit, where it starts.
        prefix: the tag of every line ("[demo]").
        interval: seconds between plain lines (0: one per update).
    """

    def __init__(self, desc, total, unit, initial=0, stream=None, prefix="[run]",
                 interval=PLAIN_INTERVAL_S):  # fmt: skip
        self.desc, self.total, self.unit, self.initial = desc, total, unit, initial
        self.prefix, self.interval = prefix, interval
        self.stream = stream or sys.stdout
        self.n, self.postfix, self.start, self.printed = initial, "", time.time(), -math.inf
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=f"{prefix} {desc}", unit=unit,
                file=self.stream, dynamic_ncols=True,
            )  # fmt: skip

    def update(self, n, postfix=""):
        """Move to position ``n`` (absolute) with an optional note (e.g. the loss)."""
        n = min(max(n, self.n), self.total)
        self.n, self.postfix = n, postfix or self.postfix
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n - self.bar.n)
        elif time.time() - self.printed >= self.interval or n == self.total:
            self._line()

    def _line(self):
        elapsed = time.time() - self.start
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = f"ETA {_minutes((self.total - self.n) / rate)}" if rate > 0 else "ETA ?"
        note = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.prefix} {self.desc} {self.n}/{self.total} "
            f"({100 * self.n / self.total:.0f}%), {rate:.2f} {self.unit}/s, {eta}{note}",
            file=self.stream,
            flush=True,
        )
        self.printed = time.time()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.printed < self.start or self.n < self.total:
            self._line()


class LogFollower:
    """Turns train_net.py's log lines into progress: training iterations (when ``max_iter`` is
    given) and evaluations."""

    def __init__(self, max_iter, desc, prefix="[run]"):
        self.max_iter, self.desc, self.prefix, self.bar = max_iter, desc, prefix, None

    def _switch(self, desc, total, unit, initial=0):
        if self.bar is not None:
            self.bar.close()
        self.bar = Progress(desc, total, unit, initial, prefix=self.prefix)

    def feed(self, line):
        if m := START_LINE.search(line):
            if self.max_iter:
                self._switch(f"{self.desc}: training", self.max_iter, "it", int(m.group(1)))
        elif (m := ITER_LINE.search(line)) and self.bar is not None:
            self.bar.update(int(m.group(1)) + 1, f"loss {m.group(2)}")
        elif m := INFERENCE_START.search(line):
            self._switch(f"{self.desc}: evaluation, inference", int(m.group(1)), "img")
        elif (m := INFERENCE_DONE.search(line)) and self.bar is not None:
            self.bar.update(int(m.group(1)))
        elif INFERENCE_END.search(line) and self.bar is not None:
            self.bar.update(self.bar.total)
            self.close()
            print(f"{self.prefix} {self.desc}: evaluation, LVIS metrics ...", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@dataclass
class RunResult:
    """How a subprocess ended: exit code, wall seconds, seconds from its start to detectron2's
    "Starting training" line (None if never), peak resident memory (MB), whether the time limit
    killed it, and the file holding its output."""

    returncode: int
    seconds: float
    seconds_to_first_iter: Optional[float]
    peak_rss_mb: float
    timed_out: bool
    log_path: str


def train_net_command(config, output_dir, opts=(), *, eval_only=False, device=None,
                      launcher: Sequence[str] = ()) -> List[str]:  # fmt: skip
    """The command line of a train_net.py run on ``config`` into ``output_dir``: ``--eval-only``
    or ``--resume`` (an interrupted run continues), then the overrides. ``launcher``: a script
    that runs train_net.py itself (with its own arguments, before ``--``), in place of it."""
    cmd = [sys.executable, *launcher] if launcher else [sys.executable, TRAIN_NET]
    cmd += ["--config-file", config, "--eval-only" if eval_only else "--resume"]
    cmd += ["OUTPUT_DIR", output_dir]
    cmd += ["MODEL.DEVICE", device] if device else []
    return cmd + list(opts)


def run_process(cmd, log_path, *, follower: Optional[Callable[[str], None]] = None, env=None,
                cwd=REPO, timeout=None, poll_s=1.0, append=True) -> RunResult:  # fmt: skip
    """Run ``cmd`` with its stdout and stderr into ``log_path``, read back every ``poll_s``
    seconds: each new line goes to ``follower`` (if given) and the first "Starting training"
    line marks the time to the first iteration; killed after ``timeout`` seconds (None: no
    limit)."""
    t0 = time.perf_counter()
    first, timed_out, pending = None, False, ""
    with open(log_path, "a" if append else "w") as log, open(log_path) as tail:
        tail.seek(0, os.SEEK_END)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            pending += tail.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                if first is None and START_LINE.search(line):
                    first = time.perf_counter() - t0
                if follower is not None:
                    follower(line)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            if timeout and time.perf_counter() - t0 > timeout and not timed_out:
                proc.kill()
                timed_out = True
            time.sleep(poll_s)
    return RunResult(
        returncode=proc.returncode,
        seconds=time.perf_counter() - t0,
        seconds_to_first_iter=first,
        peak_rss_mb=usage.ru_maxrss / 1024,
        timed_out=timed_out,
        log_path=log_path,
    )


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_train_net(output_dir, config, opts, desc, *, eval_only=False, max_iter=None,
                  progress=True, prefix="[run]"):  # fmt: skip
    """Train (``--resume``) or evaluate (``eval_only``) ``config`` through train_net.py on this
    machine's device, its output in OUTPUT_DIR/demo_stdout.log, showing its progress (training
    iterations with rate and ETA, then the evaluation's inference) unless ``progress`` is False
    (several runs at once).

    Returns:
        the evaluation results (OUTPUT_DIR/inference/results.json).
    """
    os.makedirs(output_dir, exist_ok=True)
    cmd = train_net_command(config, output_dir, opts, eval_only=eval_only, device=_device())
    log_path = os.path.join(output_dir, "demo_stdout.log")
    follower = LogFollower(None if eval_only else max_iter, desc, prefix)
    res = run_process(cmd, log_path, follower=follower.feed if progress else None)
    follower.close()
    if res.returncode:
        sys.exit(
            f"{prefix} train_net.py failed (exit {res.returncode}); see {log_path} and "
            f"{output_dir}/log.txt"
        )
    with open(os.path.join(output_dir, "inference", "results.json")) as f:
        return json.load(f)


def train_config(config, opts=()):
    """``config`` with iif-d2's keys and the overrides ``opts`` (to read MAX_ITER,
    checkpointing, datasets before a run)."""
    from detectron2.config import get_cfg

    from iif_d2 import add_iif_config

    cfg = get_cfg()
    add_iif_config(cfg)
    cfg.merge_from_file(config)
    cfg.merge_from_list(list(opts))
    return cfg
