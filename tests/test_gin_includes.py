"""gin includes of the repository's configs keep working wherever the user stands."""

import sys

from allam_jax import gin_setup


def test_include_resolves_when_a_runs_folder_shadows_it(tmp_path, monkeypatch):
    """After `allam recipe --workdir=runs/recipe` a `runs/` folder sits in the current directory; gin's package
    lookup took it for the Python package `runs` and crashed instead of finding gin_configs/runs/tiny_cpu.gin."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m pytest` puts the directory it starts in
    (tmp_path / "runs" / "recipe").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    user = tmp_path / "mine.gin"
    user.write_text("include 'runs/tiny_cpu.gin'\nTrainerConfig.num_steps = 7\n", encoding="utf-8")
    sys.modules.pop("runs", None)
    gin_setup.parse([str(user)])
    assert gin_setup.model_config().d_model == 64  # from gin_configs/models/tiny.gin, included by tiny_cpu.gin
    assert gin_setup.build_experiment().trainer.num_steps == 7
