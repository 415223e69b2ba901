"""iif-d2's configs, found from an installed package as from a clone (detectron2's
``model_zoo.get_config_file`` shape).

    from iif_d2 import model_zoo
    recipe = "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe.yaml"
    path = model_zoo.get_config_file(recipe)

``train_net.py`` and ``iif-train`` take the same config as
``--config-file iif_d2://LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe.yaml``.
A wheel carries the configs in ``iif_d2/model_zoo/configs`` (copied there when it is built); a
clone or an editable install reads the repository's ``configs/``.
"""

import os
from importlib import resources
from typing import List

__all__ = ["CONFIG_PREFIX", "get_config_file", "list_configs", "resolve_config_path"]

CONFIG_PREFIX = "iif_d2://"


def _config_root() -> str:
    packaged = str(resources.files("iif_d2") / "model_zoo" / "configs")
    if os.path.isdir(packaged):
        return packaged
    clone = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    if os.path.isdir(clone):
        return os.path.normpath(clone)
    raise FileNotFoundError(
        "iif-d2's configs are missing from this installation: reinstall iif-d2 "
        "(`pip install .` from a clone), or pass the path of a config file."
    )


def list_configs() -> List[str]:
    """Every shipped config, as the relative path :func:`get_config_file` takes."""
    root = _config_root()
    found = []
    for folder, _, files in os.walk(root):
        found += [
            os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
            for f in files
            if f.endswith(".yaml")
        ]
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """The file of a shipped config.

    Args:
        config_path: relative to the configs folder, e.g.
            "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_24e_recipe.yaml".

    Returns:
        str: an existing file's path.

    Raises:
        FileNotFoundError: no such config; the message names the closest ones.
    """
    root = _config_root()
    rel = config_path
    if rel.startswith(CONFIG_PREFIX):
        rel = rel[len(CONFIG_PREFIX) :]
    path = os.path.normpath(os.path.join(root, rel))
    if os.path.commonpath([path, root]) != root or not os.path.isfile(path):
        import difflib

        close = difflib.get_close_matches(rel, list_configs(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise FileNotFoundError(
            f"{config_path!r} is not one of iif-d2's configs.{hint} "
            "iif_d2.model_zoo.list_configs() lists them."
        )
    return path


def resolve_config_path(path: str) -> str:
    """``path`` itself, or the shipped config an ``iif_d2://`` path names."""
    return get_config_file(path) if path.startswith(CONFIG_PREFIX) else path
