import os

import pytest

# the synthetic datasets are generated once per test session, outside the working tree
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(os.path.dirname(__file__), ".datasets"))

# isort: off
import iif_d2  # noqa: E402,F401  (before any detectron2 import: compatibility shims)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
