from setuptools import find_packages, setup

setup(
    name="psa-eader",
    version="0.1.0",
    license="MIT",
    description="PSA (Ahn & Kwak, CVPR 2018) with the EADER adversarial-erasing hook for "
                "weakly-supervised semantic segmentation",
    python_requires=">=3.10",
    packages=find_packages(include=["psa_baseline*", "psa_eader*", "stages*", "demo*"]),
    install_requires=[
        "torch>=2.1", "torchvision>=0.16", "numpy>=1.26", "opencv-python-headless>=4.8",
        "pydensecrf2>=1.1", "scipy>=1.11", "imageio>=2.31", "pillow>=10.0", "tqdm>=4.66", "PyYAML>=6.0",
        "segmentation-models-pytorch>=0.6",
    ],
    entry_points={"console_scripts": ["psa-eader=stages.cli:main"]},
)
