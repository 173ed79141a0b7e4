"""Installable package for score_sde: score-based generative modelling in plain PyTorch."""
from setuptools import find_packages, setup

setup(
    name="score_sde",
    version="0.1.0",
    description="Score-based generative modelling through SDEs in plain PyTorch: "
    "one network, every sampler, exact likelihoods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["score_sde", "score_sde.*"]),
    py_modules=["run_lib", "main"],
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.10",  # weights_only loads before 2.10: CVE-2026-24747 (docs/reliability.md)
        "numpy",
        "scipy",
        "torchdiffeq>=0.2.3",
        "ml-collections",
        "absl-py",
        "tensorboard",
        "pillow",
        "tqdm",
        "scikit-learn",  # ships the embedded default data set (8x8 digits) and the GMM baseline
    ],
    extras_require={"test": ["pytest>=9"]},
)
