"""The heavy or optional dependencies: the only ones imported inside functions, where a job needs them.

Every other import sits at the top of its module (``tests/test_imports.py`` checks the whole package: an import
inside a function must name a module below, or one of ours that imports one of them at its top, or sit in a
``try`` because the name is absent from some JAX versions). So ``allam --help``, ``allam info`` or the tokenizer
commands never pay for TensorFlow, and a laptop without the ``hf`` or ``lmeval`` extra still runs everything else.

The seconds are one import after ``import jax`` on this project's 2-core CPU machine (2026-12-07).
"""

from __future__ import annotations

OPTIONAL_DEPS: dict[str, str] = {
    "tensorflow": "tf.data pipelines, TF-Text tokenizers and gs:// reads through tf.io (7.5 s)",
    "tensorflow_datasets": "the seqio tasks' TFDS sources (with TensorFlow)",
    "tensorflow_text": "SentencePiece inside tf.data (with TensorFlow)",
    "seqio": "seqio tasks and mixtures (8 s, TensorFlow included)",
    "t5": "T5's seqio preprocessors (with seqio)",
    "apache_beam": "the data cache job, `allam data cache` (2 s)",
    "torch": "Hugging Face parity checks and `convert` from PyTorch weights (2.5 s; the `hf` extra)",
    "transformers": "`convert from-hf` / `to-hf` and the chat templates' reference (1.1 s; the `hf` extra)",
    "safetensors": "reading and writing Hugging Face checkpoints (the `hf` extra)",
    "lm_eval": "the lm-evaluation-harness adapter (the `lmeval` extra)",
    "matplotlib": "the recipe's plots (0.9 s; the `notebooks` extra)",
    "nbclient": "running the notebooks (the `notebooks` extra)",
    "tensorboardX": "TensorBoard event files, only when a run writes them (3 s)",
    "orbax": "checkpoints (0.5 s); its import also installs absl's log handler, which would swallow the "
             "command line's own INFO lines if every command loaded it",
    "tensorstore": "reading one array of a checkpoint (with Orbax)",
    "jax.experimental.pallas.triton": "the flash kernel's GPU compiler parameters (GPU runs only)",
    "jax.experimental.pallas.ops.tpu": "JAX's TPU splash kernel (TPU runs and TPU interpret mode only; 0.3 s)",
}


# our own modules imported late on purpose, and why
DEFERRED: dict[str, str] = {
    "allam_jax.cli.main": "the `allam` entry point (launch.py) restarts the process with huge-page malloc first, so "
                          "JAX and the commands load once, after the restart",
}


def is_optional(module: str) -> bool:
    """True for a module named in ``OPTIONAL_DEPS`` or ``DEFERRED``, or inside one of them."""
    return any(module == name or module.startswith(name + ".") for name in (*OPTIONAL_DEPS, *DEFERRED))
