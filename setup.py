"""Installs tiered_gqn, its trainers and benchmarks."""

import setuptools

setuptools.setup(
    name="tiered_gqn",
    version="0.1.0",
    description=(
        "Generative Query Networks in Keras 3 with tiered representations and "
        "graph element spatial memory."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["tiered_gqn*", "trainer*", "benchmarks*", "cloud*"]),
    install_requires=[
        "tensorflow>=2.18",
        "keras>=3.6",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports it on every Python but no longer requires it.
        "importlib_resources",
        "google-cloud-storage>=2.0",
        "absl-py>=1.0",
        "tensorboard>=2.18",
        "numpy>=1.26",
        "pillow>=10.0",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3", "hypothesis>=6", "gcp-storage-emulator"]},
)
