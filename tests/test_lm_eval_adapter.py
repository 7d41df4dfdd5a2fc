"""The lm-evaluation-harness adapter on a tiny model and a task defined from a local file."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from allam_jax.eval.readers import read_task
from allam_jax.eval.scorer import LoglikelihoodScorer, evaluate_multiple_choice, perplexity
from allam_jax.model import Decoder
from test_eval import write_fixtures

import lm_eval  # the lmeval extra, installed by setup.sh


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from allam_jax import gin_setup
    from allam_jax.eval.lm_eval_adapter import AllamLM
    from allam_jax.checkpoint.params_io import write_params_checkpoint
    from allam_jax.core.trees import strip_boxes

    d = tmp_path_factory.mktemp("lmeval")
    gin_setup.parse(["models/tiny.gin"])
    cfg = gin_setup.model_config()
    params = strip_boxes(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"])
    params = jax.tree_util.tree_map(lambda x: x * 3.0, params)
    write_params_checkpoint(str(d / "ckpt"), params)
    return AllamLM(gin_file="models/tiny.gin", ckpt=str(d / "ckpt"), batch_size=4), d


@pytest.mark.slow
def test_simple_evaluate_on_a_local_task_matches_our_scorer(model, monkeypatch):
    lm, d = model
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _, questions, _ = read_task(write_fixtures(d / "fx")["exams_ar"])
    data = d / "local.jsonl"
    data.write_text("".join(json.dumps({"prompt": q.prompt, "choices": list(q.choices), "gold": q.gold},
                                       ensure_ascii=False) + "\n" for q in questions), encoding="utf-8")
    tasks = d / "tasks"
    tasks.mkdir()
    (tasks / "local_mc.yaml").write_text(f"""task: allam_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(model=lm, tasks=["allam_local_mc"], task_manager=TaskManager(include_path=str(tasks)))
    got = results["results"]["allam_local_mc"]
    ours = evaluate_multiple_choice(lm.scorer, questions)
    assert got["acc,none"] == pytest.approx(ours["acc"]) and got["acc_norm,none"] == pytest.approx(ours["acc_norm"])


@pytest.mark.slow
def test_rolling_loglikelihood_and_generation(model):
    from lm_eval.api.instance import Instance

    lm, _ = model
    text = "مرحبا بالعالم، this is a test."
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])[0]
    ref = perplexity(LoglikelihoodScorer(lm.gen.cfg, lm.gen.params, lm.tok_encode, lm.gen.bos_id), [text])
    assert -rolling == pytest.approx(ref["bits_per_byte"] * ref["bytes"] * 0.6931471805599453, rel=1e-4)
    out = lm.generate_until([Instance("generate_until", {}, ("Hello", {"until": ["\n"], "max_gen_toks": 6}), 0)])[0]
    assert isinstance(out, str) and "\n" not in out
    ll = lm.loglikelihood([Instance("loglikelihood", {}, ("Hello", " world"), 0)])[0]
    assert ll[0] < 0


@pytest.mark.slow
def test_module_entry_point_registers_the_model(model):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import allam_jax.eval.lm_eval_adapter as a; "
                        "from lm_eval.api.registry import get_model; print(get_model('allam_jax').__name__)"],
                       capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.stdout.strip().splitlines()[-1] == "AllamLM", r.stderr[-2000:]
