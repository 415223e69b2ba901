"""The global random generators' state as plain data (loads under ``weights_only``), and a
block that leaves it unchanged."""

import contextlib
import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "rng_preserved"]


def rng_state() -> Dict[str, Any]:
    """This process's global random generators (torch CPU and CUDA, numpy, Python) as tensors
    and plain values, so that a checkpoint holding it loads without running code.

    Returns:
        a dict for :func:`set_rng_state`.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "words": torch.tensor(words), "gauss": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators :func:`rng_state` captured (CUDA only where it was captured)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["name"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["words"].tolist()), p["gauss"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_preserved():
    """Run a block without changing the global generators' state (torch CPU, numpy, Python;
    CUDA's are left alone): whatever it draws, the state after it is the state before it."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
