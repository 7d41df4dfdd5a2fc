"""allam-jax: train Arabic-English LLMs the ALLaM way in JAX/Flax."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="allam-jax",
    version="0.1.0",
    description="Arabic-English LLM training (the ALLaM recipe) in JAX/Flax",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",  # jax 0.12
    packages=find_packages(include=["allam_jax", "allam_jax.*"]),
    package_data={"allam_jax.data": ["bundle_pins.json"]},
    install_requires=_requirements("requirements.txt"),
    extras_require={
        # gcsfs + the emulator: the gs:// end-to-end test (tests/test_gcs.py); hypothesis: tests/test_fuzz_cli.py
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "hypothesis==6.170.15", "gcsfs==2026.10.1",
                 "gcp-storage-emulator==2026.7.19"],
        "hf": ["safetensors==0.8.0", "transformers==5.23.0", "torch==2.13.0"],
        "lmeval": ["lm-eval==0.4.13"],
        "notebooks": ["nbclient==0.11.0", "nbformat==5.11.1", "ipykernel==7.4.0"],
        # the TPU compiler for `allam compile` (also on CPU-only hosts) and the runtime on TPU VMs: MaxText 0.2.5's
        # pairing with jax 0.12.0.1 (whose own `tpu` extra names 0.0.50.1); see docs/architecture.md, Pinned versions
        "tpu": ["libtpu==0.0.52"],
        # the documentation site (docs/, mkdocs.yml); tests/test_docs.py builds it with --strict
        "docs": ["mkdocs==1.6.1", "markdown==3.11.4"],
    },
    entry_points={"console_scripts": ["allam=allam_jax.launch:main"]},
)
