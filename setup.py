"""The metadata lives in pyproject.toml. This file only ships the configs inside the package: a
wheel (and an install from a clone) gets ``configs/`` as ``iif_d2/model_zoo/configs``, found by
``iif_d2.model_zoo.get_config_file``, as detectron2 ships its model zoo's configs."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildWithConfigs(build_py):
    """build_py, then configs/**/*.yaml (and its README) copied into the built package."""

    def run(self):
        super().run()
        source = os.path.join(ROOT, "configs")
        if not os.path.isdir(source):  # an sdist without configs: nothing to ship
            return
        target = os.path.join(self.build_lib, "iif_d2", "model_zoo", "configs")
        if os.path.isdir(target):
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


setup(cmdclass={"build_py": BuildWithConfigs})
