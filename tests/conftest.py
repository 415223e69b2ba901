import os

import pytest

# the synthetic datasets are generated once per test session, outside the working tree
os.environ.setdefault("DETECTRON2_DATASETS", os.path.join(os.path.dirname(__file__), ".datasets"))

import iif_d2.data  # noqa: E402,F401  (registers the datasets, under the folder set above)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
