from setuptools import find_packages, setup

setup(
    name="stmixer",
    version="0.1.0",
    description="Spatio-temporal action detection with STMixer (one-stage sparse detector) in PyTorch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["stmixer", "stmixer.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "numpy",
        "pyyaml",
        "yacs",
        "fvcore",
        "opencv-python-headless",
        "simplejpeg",
        "av",
        "tensorboardX",
        "scipy",
        "pandas",
        "tqdm",
    ],
    extras_require={
        "dev": ["pytest", "pytest-xdist", "matplotlib"],
        "plot": ["matplotlib"],
    },
)
