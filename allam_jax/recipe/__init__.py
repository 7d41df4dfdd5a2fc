"""``allam recipe``: the whole ALLaM recipe at tiny scale, stage by stage, with ablations and a report."""

from allam_jax.recipe.config import STAGES, RecipeConfig
from allam_jax.recipe.heldout import HeldoutConfig

__all__ = ["STAGES", "HeldoutConfig", "RecipeConfig"]
