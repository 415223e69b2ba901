"""Upstream deprecation warnings that are no fault of the user's, hidden one by one.

:func:`hide_upstream_deprecations` is called by iif-d2's commands (``train_net.py``, the tools,
the CLIs) before they import detectron2; importing iif-d2 itself changes no warning filter.
"""

import warnings

__all__ = ["hide_upstream_deprecations"]


def hide_upstream_deprecations():
    """Hide fvcore's ``torch.jit.script`` deprecation (printed at detectron2's import) and the
    ``torch.meshgrid`` indexing warning of detectron2's anchor generator."""
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.script` is (deprecated|not supported)",
        category=FutureWarning,
        module=r"torch\.jit\._script",
    )
    warnings.filterwarnings(
        "ignore",
        message=r"torch\.meshgrid: in an upcoming release, it will be required to pass the",
        category=UserWarning,
        module=r"torch\.functional",
    )
