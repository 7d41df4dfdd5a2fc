"""``allam compile --search`` (aot/search.py) on the small model of test_collectives, compiled for a v5p-8: the
variants that fit within the headroom ranked by estimated step time, each line of micro-batch counts ending at
its first fit, and the printed gin bindings building the winning config."""

import pytest

from allam_jax import gin_setup

pytestmark = pytest.mark.tpu


def _bindings():
    from test_collectives import BINDINGS

    return BINDINGS + ["PartitioningConfig.mesh_shape = (1, -1, 1)", "ModelConfig.attention_impl = 'pallas'"]


@pytest.mark.slow
def test_search_ranks_what_fits_by_estimated_time_and_stops_each_line_at_its_first_fit(monkeypatch):
    import allam_jax.aot.dry_run as dry_run
    import allam_jax.aot.search as search_lib
    from allam_jax.aot.search import format_search, search
    from allam_jax.aot.topology import resolve_topology

    topology = resolve_topology("v5p-8")
    compiled, original = {}, dry_run.compile_step

    def cached(exp, topo, step="train"):  # one compile per distinct config across both searches
        key = (exp.model.remat_policy, exp.trainer.grad_accum_steps, exp.model.attention_backward)
        if key not in compiled:
            compiled[key] = original(exp, topo, step)
        return compiled[key]

    monkeypatch.setattr(search_lib, "compile_step", cached)
    grid = dict(remat=["none", "full"], grad_accum=[1, 2], logits_chunk=[0], backward=["fused"])
    roomy = search(["runs/tiny_cpu.gin"], _bindings(), topology, headroom=0.0, log=lambda s: None, **grid)
    # everything fits with no headroom: each line stops at one micro-batch
    assert [c.bindings[-1] for c in roomy] == ["TrainerConfig.grad_accum_steps = 1"] * 2
    times = [c.step_seconds for c in roomy]
    assert all(c.within_budget for c in roomy) and times == sorted(times) and all(t > 0 for t in times)

    # a budget between the two configs' memory: no remat goes over at one micro-batch and tries two
    need = {c.bindings[0]: c.report.required_bytes for c in roomy}
    small, large = sorted(need.values())
    assert need["ModelConfig.remat_policy = 'full'"] == small < large
    headroom = 1 - (small + large) / 2 / topology.hbm_bytes
    tight = search(["runs/tiny_cpu.gin"], _bindings(), topology, headroom=headroom, log=lambda s: None, **grid)
    variants = {(c.bindings[0], c.bindings[-1]): c for c in tight}
    assert len(tight) == 3 and ("ModelConfig.remat_policy = 'full'", "TrainerConfig.grad_accum_steps = 2") not in variants
    over = variants[("ModelConfig.remat_policy = 'none'", "TrainerConfig.grad_accum_steps = 1")]
    assert over.report.fits and not over.within_budget
    assert tight[0].within_budget and tight[0].step_seconds == min(c.step_seconds for c in tight if c.within_budget)
    assert not tight[-1].within_budget or all(c.within_budget for c in tight)

    text = format_search(tight, headroom)
    assert "Fastest within" in text and all(b in text for b in tight[0].bindings)
    assert "over the headroom" in text
    # the printed bindings build the winner
    gin_setup.parse(["runs/tiny_cpu.gin"], _bindings() + list(tight[0].bindings))
    exp = gin_setup.build_experiment()
    winner = dict(b.split(" = ") for b in tight[0].bindings)
    assert repr(exp.model.remat_policy) == winner["ModelConfig.remat_policy"]
    assert str(exp.trainer.grad_accum_steps) == winner["TrainerConfig.grad_accum_steps"]

    # the backward kernel is a search dimension: the separate kernels recompute the scores once more (dK/dV's four
    # matmuls and dQ's three against the fused five), which the estimate sees in the attention FLOPs
    both = search(["runs/tiny_cpu.gin"], _bindings(), topology, headroom=0.0, log=lambda s: None, remat=["full"],
                  grad_accum=[1], logits_chunk=[0], backward=["fused", "separate"])
    flops = {c.bindings[-2]: c.report.estimate["attention_flops"] for c in both}
    fused, separate = (flops[f"ModelConfig.attention_backward = '{k}'"] for k in ("fused", "separate"))
    assert separate / fused == pytest.approx((2 + 2 + 4 + 3) / (2 + 2 + 5))  # forward, remat's forward, backward


def test_search_refuses_a_headroom_outside_zero_to_one():
    from allam_jax.aot.search import search
    from allam_jax.core.errors import ConfigError

    with pytest.raises(ConfigError, match="--headroom"):
        search(["runs/tiny_cpu.gin"], [], None, headroom=1.0)
