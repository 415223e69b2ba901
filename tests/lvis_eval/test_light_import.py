"""The LVIS evaluation command loads neither torch nor detectron2: its memory at LVIS val size
(docs/evaluation.md) has no framework in it."""

import subprocess
import sys

CODE = """
import sys, runpy
sys.argv = ["iif_d2.lvis_eval", "--help"]
try:
    runpy.run_module("iif_d2.lvis_eval", run_name="__main__")
except SystemExit:
    pass
import iif_d2.lvis_eval.fp_analysis  # noqa: F401
print(sorted(m for m in ("torch", "detectron2") if m in sys.modules))
"""


def test_the_evaluation_commands_import_no_framework():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
