"""Helpers of the benchmark scripts that decide what their tables say."""

import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from profile_step import group_of, hlo_op_names  # noqa: E402


def test_ops_inside_a_loop_body_are_attributed_to_the_loop():
    """XLA's CPU fusions inside a while body carry no op_name; the profile must not drop their time."""

    def f(x):
        with jax.named_scope("outer"):
            return jax.lax.map(lambda row: jnp.exp(row * 2.0).sum() + jnp.tanh(row).max(), x)

    hlo = jax.jit(f).lower(jnp.ones((4, 8))).compile().as_text()
    names = hlo_op_names(hlo)
    body = re.search(r"body=%([\w.\-]+)", hlo).group(1)
    block = hlo[hlo.index(f"%{body} ("):]
    block = block[: block.index("\n}")]
    inside = re.findall(r"^\s+(?:ROOT )?%([\w.\-]+) = ", block, re.M)
    assert inside
    for name in inside:
        assert name in names, name
        assert "outer" in names[name] or "while" in names[name], (name, names[name])


SYNTHETIC_HLO = """\
%fused_computation.7 (param_0.1: f32[8,64]) -> bf16[64,8] {
  %param_0.1 = f32[8,64]{1,0} parameter(0)
  ROOT %convert.1 = bf16[64,8]{1,0} convert(%param_0.1)
}

%wide.body.3 (wide_param: (s32[], f32[8,64])) -> (s32[], f32[8,64]) {
  %wide_param = (s32[], f32[8,64]{1,0}) parameter(0)
  %copy_bitcast_fusion.3 = bf16[64,8]{1,0} fusion(%gte.1), kind=kLoop, calls=%fused_computation.7
  ROOT %tuple.2 = (s32[], f32[8,64]{1,0}) tuple(%add.1, %gte.1)
}

ENTRY %main.9 (Arg_0.1: f32[8,64]) -> f32[8,64] {
  %Arg_0.1 = f32[8,64]{1,0} parameter(0)
  %while.24 = (s32[], f32[8,64]{1,0}) while(%tuple.1), condition=%wide.cond.2, body=%wide.body.3, \
metadata={op_name="jit(train_step)/transpose(jvp(Decoder))/layer_5/attention/while" stack_frame_id=3}
  %ynn_fusion.1 = f32[8,64]{1,0} fusion(%Arg_0.1), kind=kCustom, \
metadata={op_name="jit(train_step)/jvp(Decoder)/lm_head/dot_general"}
}
"""


def test_fusions_without_metadata_take_their_loops_op_name():
    """As XLA's CPU backend writes them (layout copies in a while body have no metadata): the real shape of it."""
    names = hlo_op_names(SYNTHETIC_HLO)
    assert names["copy_bitcast_fusion.3"] == "jit(train_step)/transpose(jvp(Decoder))/layer_5/attention/while"
    assert names["ynn_fusion.1"] == "jit(train_step)/jvp(Decoder)/lm_head/dot_general"
    assert group_of(names["copy_bitcast_fusion.3"]) == "model backward: attention"


def test_groups_split_forward_backward_and_parts():
    assert group_of("jit(train_step)/jvp(Decoder)/layer_3/mlp/up/dot_general") == "model forward: mlp"
    assert group_of("jit(train_step)/transpose(jvp(Decoder))/layer_0/attention/while") == "model backward: attention"
    assert group_of("jit(train_step)/adam/mul") == "optimizer, loss and metrics"


def test_op_kinds_sum_layers_and_loop_steps_together():
    from profile_step import op_kind

    a = op_kind("ynn_fusion.609", "jit(train_step)/transpose(jvp(Decoder))/layer_0/attention/while/body/closed_call/"
                "vmap(gts,sd->gtd)/dot_general")
    b = op_kind("ynn_fusion.12", "jit(train_step)/transpose(jvp(Decoder))/layer_7/attention/while/body/closed_call/"
                "vmap(gts,sd->gtd)/dot_general")
    assert a == b and a.split() == ["backward", "ynn_fusion", "vmap(gts,sd->gtd)/dot_general"]
    fwd = op_kind("subtract_exponential_fusion.3", "jit(train_step)/jvp(Decoder)/layer_0/attention/while/body/"
                  "closed_call/vmap()/exp")
    assert fwd.split() == ["forward", "subtract_exponential_fusion", "vmap()/exp"]
    assert op_kind("multiply_add_fusion", "jit(train_step)/add").split() == ["forward", "multiply_add_fusion", "add"]


def _params_in_table(capsys, argv):
    import train_step

    assert train_step.main(argv) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    return row[0], int(row[1].replace(",", ""))


@pytest.mark.slow
def test_train_step_measures_the_model_gin_defines(capsys):
    """Bindings reach the benchmarked model: one more layer adds exactly one Llama block's parameters (attention
    with 8 query and 4 KV heads of 8 dims, a SwiGLU MLP, two RMSNorm scales)."""
    common = ["--gin_file", "models/tiny.gin", "--steps", "1", "--warmup", "0", "--batch_size", "2", "--seq_len", "32",
              "--peak_flops", "1e12"]
    name, one = _params_in_table(capsys, common + ["--gin_param", "ModelConfig.num_layers=1"])
    _, two = _params_in_table(capsys, common + ["--gin_param", "ModelConfig.num_layers=2"])
    d, heads, kv_heads, head_dim, mlp = 64, 8, 4, 8, 192
    block = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2 + 3 * d * mlp + 2 * d
    assert name == "tiny" and two - one == block


def test_train_step_bad_gin_is_one_line(capsys):
    import train_step

    assert train_step.main(["--gin_file", "models/tiny.gin", "--gin_param", "ModelConfig.bogus=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err
