"""The recipe's ``progressive`` arm: progressive vocabulary expansion (AraLLaMA, ACL 2025).

The Arabic pieces enter in stages (``RecipeConfig.progressive_stages``: shares of the added pieces), so the share of
tokens the model has never seen stays bounded at each entry. Stage k is a run on a vocabulary holding the first n_k
new pieces (``merge --max_new n_k`` unpadded: every stage's ids are kept by the next, the last stage is the merged
tokenizer itself); its new rows start as the all-at-once arm's do (``RecipeConfig.expand_init``), from the last
checkpoint of stage k-1; its data goes on where stage k-1 stopped (``SeqioData.start_batch``); the CPT steps are split
evenly, so the arm trains as many steps on as many batches as every other arm. Layout under the recipe workdir::

    tokenizer/progressive{k}.{model,json}   stage k's vocabulary (k < last; the last stage: tokenizer/merged)
    cpt/ARM/expand{k}/  cpt/ARM/stage{k}/   stage k's starting checkpoint and its run
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.errors import ConfigError
from allam_jax.data.pipeline import SeqioData
from allam_jax.gin_setup import Override
from allam_jax.objectives.lm import StepConfig
from allam_jax.recipe.config import is_seed_run, seed_arm
from allam_jax.recipe.heldout import perplexity_documents
from allam_jax.tokenizer.bpe import merge_bpe
from allam_jax.tokenizer.expand import expand_checkpoint
from allam_jax.tokenizer.interface import load_tokenizer
from allam_jax.tokenizer.merge import merge_tokenizers
from allam_jax.train.loop import TrainerConfig

if TYPE_CHECKING:
    from allam_jax.recipe.stages import Recipe

ARM = "progressive"


def is_progressive(name: str) -> bool:
    """``progressive`` or one of its seeds' runs (``progressive_seedK``)."""
    return name == ARM or (is_seed_run(name) and name.rsplit("_seed", 1)[0] == ARM)


def arm_names(cfg) -> list[str]:
    """The progressive arm and its seeds' runs, or none when ``progressive_stages`` is empty."""
    if not cfg.progressive_stages:
        return []
    return [seed_arm(ARM, k) for k in range(cfg.seeds if ARM in cfg.seeded_arms else 1)]


def stage_steps(cfg) -> list[int]:
    """The CPT steps split evenly over the stages (the remainder to the last)."""
    n = len(cfg.progressive_stages)
    each = cfg.cpt_steps // n
    if each < 1:
        raise ConfigError(f"RecipeConfig.cpt_steps = {cfg.cpt_steps} cannot be split over {n} progressive stages")
    return [each] * (n - 1) + [cfg.cpt_steps - each * (n - 1)]


def stage_workdirs(recipe: "Recipe", arm: str) -> list[tuple[Path, int]]:
    """Each stage's run directory and the CPT step it starts at."""
    starts = [0]
    for n in stage_steps(recipe.cfg)[:-1]:
        starts.append(starts[-1] + n)
    return [(recipe.dir / "cpt" / arm / f"stage{k}", start) for k, start in enumerate(starts, 1)]


def tokenizers(recipe: "Recipe") -> list[Path]:
    """Each stage's tokenizer, made where missing (after the expand stage: it reads the merge's piece count)."""
    c = recipe.cfg
    added = recipe.expand_summary()["merge"]["added"]
    paths = []
    for k, share in enumerate(c.progressive_stages[:-1], 1):
        path = recipe.tok / (f"progressive{k}" + recipe.tokenizer("merged").suffix)
        if not path.is_file():
            pieces, base, arabic = math.ceil(share * added), recipe.tokenizer("base"), recipe.tokenizer("arabic")
            merge = merge_bpe if c.tokenizer_kind == "bpe" else merge_tokenizers
            merge(str(base), str(arabic), str(path), pad_to_multiple=1, max_new=pieces)
        paths.append(path)
    return paths + [recipe.tokenizer("merged")]


def _share_past(ids: list[int], before: int) -> float:
    """The share of ``ids`` past a vocabulary of ``before`` ids: tokens new to a model of that vocabulary."""
    return round(sum(i >= before for i in ids) / max(len(ids), 1), 4)


def summary(recipe: "Recipe") -> dict:
    """The stages (share, pieces, vocabulary size, steps, and the share of held-out Arabic tokens new to the model
    when the stage's vocabulary enters: ids past the vocabulary before it) and, for comparison, that share when every
    piece enters at once."""
    paths = tokenizers(recipe)
    docs = perplexity_documents(str(recipe.data / "heldout" / "ar.txt"), recipe.cfg.heldout.perplexity_bytes)
    toks = [load_tokenizer(str(p)) for p in paths]
    ids = [[i for doc in docs for i in tok.encode(doc)] for tok in toks]
    sizes = [load_tokenizer(str(recipe.tokenizer("base"))).vocab_size] + [tok.vocab_size for tok in toks]
    stages = [{"share": float(s), "vocab_size": v, "tokenizer": p.name, "steps": n, "new_token_share": _share_past(i, b)}
              for s, v, p, n, i, b in zip(recipe.cfg.progressive_stages, sizes[1:], paths, stage_steps(recipe.cfg),
                                          ids, sizes)]
    return {"stages": stages, "all_at_once_new_token_share": _share_past(ids[-1], sizes[0])}


def train(recipe: "Recipe", arm: str, bindings: Sequence[str], run: Callable) -> str:
    """Trains the arm's stages in order (each resumes or is skipped as any run is); returns the last stage's
    workdir. ``run(gin_files, bindings, workdir, overrides)`` trains one run."""
    c = recipe.cfg
    before_tok, before_ckpt = recipe.tokenizer("base"), str(Workdir.at(recipe.dir / "base").checkpoints)
    for k, (path, (workdir, start), steps) in enumerate(zip(tokenizers(recipe), stage_workdirs(recipe, arm),
                                                             stage_steps(c)), 1):
        init = recipe.dir / "cpt" / arm / f"expand{k}"
        vocab_size = load_tokenizer(str(path)).vocab_size
        if not (init / "expansion.json").is_file():
            fit = recipe.head_fit(vocab_size) if c.expand_init == "fitted" else None
            expand_checkpoint(before_ckpt, str(before_tok), str(path), str(init), c.expand_init, c.seed, fit=fit)
        every = c.checkpoint_every(c.cpt_steps)  # the all-at-once arms' spacing, whatever a stage's length
        overrides = (recipe.model_overrides(vocab_size) + recipe.corpus_overrides(str(path))
                     + [Override(SeqioData, start_batch=start), Override(StepConfig, z_loss_weight=1e-4),
                        Override(TrainerConfig, init_from=str(init)), recipe.watch_override(steps)]
                     + recipe.schedule_overrides(steps, c.cpt_learning_rate,
                                                 max(1, c.cpt_warmup_steps * steps // c.cpt_steps))
                     + [Override(TrainerConfig, checkpoint_every=min(every, steps), keep_checkpoints=steps // every + 2)])
        run((c.model_gin, c.data_gin), tuple(bindings), str(workdir), overrides)
        before_tok, before_ckpt = path, str(Workdir.at(workdir).checkpoints)
    return str(workdir)
