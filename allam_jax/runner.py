"""Running things from gin: the layer above ``gin_setup`` (which only binds) that the commands, the recipe and
the lm-eval adapter call: train a run, open a model to decode or score."""

from __future__ import annotations

from typing import Optional, Sequence

import gin
import jax

from allam_jax import gin_setup
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.paths import write_text_atomically
from allam_jax.gin_setup import Override
from allam_jax.inference.session import open_generator
from allam_jax.train.loop import train


def train_from_gin(gin_files: Sequence[str], bindings: Sequence[str], workdir: str,
                   overrides: Sequence[Override] = ()) -> dict[str, float]:
    """``allam train`` in this process: parse, build, train; ``WORKDIR/config.gin`` (process 0), the operative
    config with every override in it, is written once the run is accepted."""
    gin_setup.parse(gin_files, bindings, overrides)
    exp = gin_setup.build_experiment()
    operative = gin.config_str()

    def write_config() -> None:  # only once the run is accepted: a refused resume keeps the old record
        if jax.process_index() == 0:
            write_text_atomically(Workdir.at(workdir).config_gin, operative)

    return train(exp, workdir, on_accepted=write_config)


def load_generator(gin_files: Sequence[str], bindings: Sequence[str], ckpt: str, vocabulary: Optional[str] = None):
    """``allam generate/chat/eval`` and the lm-eval adapter: the model shape and mesh from gin, parameters from
    ``ckpt``, the tokenizer from ``vocabulary`` or else the gin data config's (bytes for a model-only file)."""
    gin_setup.parse(gin_files, bindings)
    cfg, pcfg = gin_setup.model_config(), gin_setup.partitioning_config()
    if vocabulary is None:
        try:
            vocabulary = gin_setup.build_experiment().data.describe().vocabulary
        except Exception:  # noqa: BLE001 - a model-only gin file has no data config: bytes, as the tiny models use
            vocabulary = "byte"
    return open_generator(cfg, ckpt, vocabulary, pcfg)
