"""The knobs of ``allam recipe`` (gin: ``RecipeConfig``, ``HeldoutConfig``)."""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from allam_jax.core.errors import ConfigError
from allam_jax.recipe.heldout import HeldoutConfig

STAGES = ("data", "base", "expand", "cpt", "sft", "dpo", "rival", "eval", "report")
TRAINING_STAGES = ("base", "cpt", "sft", "dpo", "rival", "rival_sft")
TOKENIZER_KINDS = ("sentencepiece", "bpe")
EXPAND_METHODS = ("fitted", "mean_subtoken", "random")  # the expanded checkpoints the recipe writes (expand/NAME)


def seed_arm(arm: str, k: int) -> str:
    """The name of ``arm`` trained with seed offset ``k`` (k = 0: the arm itself)."""
    return arm if k == 0 else f"{arm}_seed{k}"


def is_seed_run(name: str) -> bool:
    """True for ``ARM_seedK`` (K >= 1), an arm's run with another seed."""
    arm, _, k = name.rpartition("_seed")
    return bool(arm) and k.isdigit() and int(k) >= 1


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """The tiny ALLaM recipe: sizes and steps of each stage.

    ``stage_bindings`` adds gin bindings to one training stage (``base``, ``cpt``, ``sft``, ``dpo``), e.g.
    ``{'cpt': ['OptimizerConfig.schedule = "constant"']}``; ``arms_file`` is a sweep variants file whose
    ``${placeholders}`` the recipe fills (see ``gin_configs/recipes/tiny_arms.variants``).
    """

    model_gin: str = "models/tiny.gin"
    data_gin: str = "data/ar_en_translated.gin"
    bundled_dir: str = "data_cache/bundled"
    heldout: HeldoutConfig = HeldoutConfig()
    base_vocab_size: int = 1024
    arabic_vocab_size: int = 1024
    pad_vocab_to_multiple: int = 64
    batch_size: int = 8
    seq_len: int = 256
    base_steps: int = 400
    base_learning_rate: float = 3e-3
    cpt_steps: int = 250
    cpt_learning_rate: float = 1.5e-3
    cpt_warmup_steps: int = 25
    sft_steps: int = 150
    sft_learning_rate: float = 1e-3
    dpo_steps: int = 60
    dpo_learning_rate: float = 2e-4
    dpo_beta: float = 0.1
    dpo_eval_pairs: int = 200
    curve_points: int = 4
    expand_init: str = "fitted"  # how the main arm's new rows start (expand-checkpoint --init)
    # the Arabic tokenizer also sees each vowelled document without its diacritics (tokenizer train
    # --also_undiacritised): off, because the recipe's held-out Arabic is 84% vowelled (docs/recipe.md: measured both ways)
    arabic_also_undiacritised: bool = False
    # the base tokenizer's kind: 'sentencepiece' (Llama-2's) or 'bpe' (byte-level, Llama-3's / Qwen's), the Arabic
    # pieces learned and merged the same way (`allam recipe --tokenizer_kind bpe`)
    tokenizer_kind: str = "sentencepiece"
    arms_file: str = "recipes/tiny_arms.variants"
    main_arm: str = "full"
    stage_bindings: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    eval_batch_size: int = 8
    shuffle_buffer: int = 2000
    seed: int = 0
    # each arm a bits/byte claim compares trains this many times (TrainerConfig.seed and SeqioData.seed = seed + k:
    # the data order; the starting checkpoints stay the same), as arms ARM_seedK; with 2 or more, those claims are
    # decided by a difference of more than two standard errors instead of the fixed 1% (`allam recipe --seeds N`)
    seeds: int = 1
    seeded_arms: Sequence[str] = ("full", "arabic_only", "no_expansion", "random_init", "no_translated", "progressive")
    # progressive vocabulary expansion (AraLLaMA), the arm `progressive`: the Arabic pieces enter in stages, each
    # stage's share of the added pieces (rising, the last 1.0: every piece), the CPT steps split evenly; each stage a
    # run on its own vocabulary whose new rows start (expand_init) from the previous stage's last checkpoint, its data
    # going on where the previous stage stopped; empty: no such arm
    progressive_stages: Sequence[float] = (0.25, 0.5, 1.0)
    # the larger model with lower-quality alignment (stage `rival`): these bindings on top of model_gin (2-4x the
    # parameters), pretrained from scratch on the merged vocabulary and the full mixture for rival_steps (0: as many
    # as the small model's base + CPT steps), then SFT only; none: the stage is skipped
    rival_model_bindings: Sequence[str] = ("ModelConfig.d_model = 128", "ModelConfig.mlp_dim = 384")
    rival_steps: int = 0

    def __post_init__(self):
        for name in ("base_vocab_size", "arabic_vocab_size", "pad_vocab_to_multiple", "batch_size", "seq_len",
                     "base_steps", "cpt_steps", "sft_steps", "dpo_steps", "dpo_eval_pairs", "curve_points",
                     "eval_batch_size", "shuffle_buffer", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"RecipeConfig.{name} must be a positive integer, got {value!r}")
        if self.expand_init not in EXPAND_METHODS:
            raise ConfigError(f"RecipeConfig.expand_init must be one of {EXPAND_METHODS}, got {self.expand_init!r}")
        if self.tokenizer_kind not in TOKENIZER_KINDS:
            raise ConfigError(f"RecipeConfig.tokenizer_kind must be one of {TOKENIZER_KINDS}, got "
                              f"{self.tokenizer_kind!r}")
        if isinstance(self.rival_steps, bool) or not isinstance(self.rival_steps, int) or self.rival_steps < 0:
            raise ConfigError(f"RecipeConfig.rival_steps must be a non-negative integer, got {self.rival_steps!r}")
        shares = list(self.progressive_stages)
        if shares and (not all(isinstance(x, (int, float)) and 0 < x <= 1 for x in shares) or shares[-1] != 1
                       or any(b <= a for a, b in zip(shares, shares[1:]))):
            raise ConfigError(f"RecipeConfig.progressive_stages must rise strictly within (0, 1] and end at 1.0 (every "
                              f"piece), got {shares!r}")
        unknown = [k for k in self.stage_bindings if k not in TRAINING_STAGES]
        if unknown:
            raise ConfigError(f"RecipeConfig.stage_bindings: unknown stage(s) {unknown}; use {', '.join(TRAINING_STAGES)}")

    def checkpoint_every(self, steps: int) -> int:
        """Checkpoints at ``curve_points`` evenly spaced steps, all kept: the points of the training curves."""
        return max(1, steps // self.curve_points)
