from setuptools import find_packages, setup

setup(
    name="iif-d2",
    version="0.1.0",
    description="Inverse Image Frequency (IIF) for long-tailed detection on detectron2",
    packages=find_packages(include=["iif_d2", "iif_d2.*"]),
    package_data={"iif_d2": ["data/*.csv"]},
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "numpy",
        "pycocotools>=2.0.2",
        "lvis==0.5.3",
        "opencv-python",  # what lvis requires; detectron2 imports cv2
        "setuptools<81",  # detectron2 imports pkg_resources, removed in setuptools 81
        # detectron2 itself is installed from source (see README); not on PyPI.
    ],
    extras_require={"dev": ["pytest", "ruff==0.17.*"]},
)
