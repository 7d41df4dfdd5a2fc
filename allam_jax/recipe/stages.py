"""The stages of ``allam recipe``: each writes its outputs under the workdir, then ``stages/NAME.json``; a
stage whose marker exists is skipped, and a training stage cut short resumes from its checkpoints.

Layout of a recipe workdir::

    data/train/ data/heldout/ data/align/ data/mc/      splits, alignment sets, evaluation items
    tokenizer/{base,arabic,merged}.model fertility.json
    base/                        (a) English base model (the stand-in for Llama-2)
    expand/{mean_subtoken,random}/ (b) the base model grown to the merged vocabulary
    cpt/ARM/                     (c) continued pretraining, one workdir per ablation arm
    sft/ dpo/                    (d, e) alignment of the main arm
    eval/                        (f) results.json (+ a cache per evaluated checkpoint)
    report.md plots/             (g)
"""

from __future__ import annotations

import json
import logging
import string
import time
from pathlib import Path
from typing import Callable, Sequence

from allam_jax.core.errors import ConfigError
from allam_jax.recipe.config import STAGES, RecipeConfig

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _train(gin_files: Sequence[str], bindings: Sequence[str], workdir: str) -> int:
    from allam_jax import gin_setup

    log.info("training %s", workdir)
    gin_setup.train_from_gin(gin_files, bindings, workdir)
    return 0


class Recipe:
    """One recipe run in ``workdir``; ``run()`` goes through :data:`STAGES` in order."""

    def __init__(self, cfg: RecipeConfig, workdir: str):
        self.cfg = cfg
        self.dir = Path(workdir).absolute()
        self.data = self.dir / "data"
        self.tok = self.dir / "tokenizer"

    # ------------------------------------------------------------ plumbing

    def marker(self, stage: str) -> Path:
        return self.dir / "stages" / f"{stage}.json"

    def done(self, stage: str) -> bool:
        return self.marker(stage).is_file()

    def run(self, stop_after: str = "report", redo: Sequence[str] = (), progress: Callable[[str], None] = print) -> dict:
        """Runs every stage up to ``stop_after`` that has not finished; returns ``{stage: summary}``."""
        if stop_after not in STAGES:
            raise ConfigError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
        bad = [s for s in redo if s not in STAGES]
        if bad:
            raise ConfigError(f"unknown stage(s) {bad} in --redo; stages: {', '.join(STAGES)}")
        for stage in redo:
            self.marker(stage).unlink(missing_ok=True)
        summaries = {}
        for stage in STAGES[: STAGES.index(stop_after) + 1]:
            if self.done(stage):
                progress(f"[recipe] {stage}: done already (delete {self.marker(stage)} or use --redo {stage} to rerun)")
                summaries[stage] = _read_json(self.marker(stage))
                continue
            progress(f"[recipe] {stage} ...")
            start = time.perf_counter()
            summary = getattr(self, f"stage_{stage}")()
            summary["seconds"] = round(time.perf_counter() - start, 1)
            _write_json(self.marker(stage), summary)
            summaries[stage] = summary
            progress(f"[recipe] {stage}: done in {summary['seconds']:.0f} s")
        return summaries

    def model_bindings(self, vocab_size: int) -> list[str]:
        c = self.cfg
        return [f"ModelConfig.vocab_size = {vocab_size}", f"ModelConfig.max_seq_len = {c.seq_len}",
                f"TrainerConfig.batch_size = {c.batch_size}", f"TrainerConfig.seq_len = {c.seq_len}",
                f"TrainerConfig.seed = {c.seed}", "PartitioningConfig.mesh_shape = (1, -1, 1)"]

    def schedule_bindings(self, steps: int, lr: float, warmup: int) -> list[str]:
        c = self.cfg
        return [f"TrainerConfig.num_steps = {steps}", f"TrainerConfig.checkpoint_every = {c.checkpoint_every(steps)}",
                f"TrainerConfig.keep_checkpoints = {c.curve_points + 1}",
                f"TrainerConfig.log_every = {max(1, steps // 20)}", f"OptimizerConfig.learning_rate = {lr}",
                f"OptimizerConfig.warmup_steps = {warmup}", f"OptimizerConfig.decay_steps = {steps}",
                "OptimizerConfig.schedule = 'cosine'"]

    def corpus_bindings(self, vocabulary: str) -> list[str]:
        train = self.data / "train"
        return [f"SeqioData.vocabulary = {vocabulary!r}", f"CorpusPaths.en = [{str(train / 'en.txt')!r}]", f"CorpusPaths.ar = [{str(train / 'ar.txt')!r}]",
                f"CorpusPaths.parallel = [{str(train / 'parallel.jsonl')!r}]", "CorpusPaths.translated = []",
                f"SeqioData.seed = {self.cfg.seed}", f"SeqioData.shuffle_buffer = {self.cfg.shuffle_buffer}"]

    def vocab_sizes(self) -> dict[str, int]:
        return _read_json(self.marker("expand"))["vocab_sizes"] if self.done("expand") else {}

    # ------------------------------------------------------------ stages

    def stage_data(self) -> dict:
        from allam_jax.align.bundled import make_alignment_sets
        from allam_jax.data import corpora
        from allam_jax.recipe.heldout import build_items, split_corpora

        bundled = Path(self.cfg.bundled_dir)
        if not all((bundled / n).is_file() for n in ("en.txt", "ar.txt", "parallel.jsonl")):
            log.info("bundled corpora missing in %s: running `allam data prepare`", bundled)
            corpora.prepare(str(bundled))
        counts = split_corpora(str(bundled), str(self.data), self.cfg.heldout)
        align = make_alignment_sets(str(self.data / "train" / "parallel.jsonl"), str(self._mkdir(self.data / "align")),
                                    seed=self.cfg.seed)
        items = build_items(str(self.data / "heldout"), str(self.data / "mc"), self.cfg.heldout)
        return {"split": counts, "alignment": align, "mc_items": items}

    def _mkdir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stage_base(self) -> dict:
        from allam_jax.tokenizer.train import train_tokenizer

        c = self.cfg
        base_model = self.tok / "base.model"
        if not base_model.is_file():
            self._mkdir(self.tok)
            train_tokenizer([str(self.data / "train" / "en.txt")], c.base_vocab_size, str(base_model))
        bindings = (self.model_bindings(c.base_vocab_size) + self.corpus_bindings(str(base_model))
                    + ["SeqioData.rates = {'en_pretrain': 1.0}", "StepConfig.z_loss_weight = 1e-4"]
                    + self.schedule_bindings(c.base_steps, c.base_learning_rate, max(1, c.base_steps // 20))
                    + list(c.stage_bindings.get("base", ())))
        _train([c.model_gin, c.data_gin], bindings, str(self.dir / "base"))
        return {"tokenizer": str(base_model), "workdir": str(self.dir / "base")}

    def stage_expand(self) -> dict:
        from allam_jax.tokenizer.expand import expand_checkpoint
        from allam_jax.tokenizer.fertility import fertility_table
        from allam_jax.tokenizer.merge import merge_tokenizers
        from allam_jax.tokenizer.spm_io import load_proto
        from allam_jax.tokenizer.train import train_tokenizer

        c = self.cfg
        base, arabic, merged = self.tok / "base.model", self.tok / "arabic.model", self.tok / "merged.model"
        train_tokenizer([str(self.data / "train" / "ar.txt")], c.arabic_vocab_size, str(arabic))
        merge = merge_tokenizers(str(base), str(arabic), str(merged), c.pad_vocab_to_multiple)
        heldout = [str(self.data / "heldout" / "en.txt"), str(self.data / "heldout" / "ar.txt")]
        fertility = fertility_table([str(base), str(merged)], heldout)
        for row in fertility:
            row["tokenizer"] = "base" if row["model"] == str(base) else "merged"
        _write_json(self.tok / "fertility.json", fertility)
        reports = {}
        for method in ("mean_subtoken", "random"):
            out = self.dir / "expand" / method
            if not (out / "expansion.json").is_file():
                expand_checkpoint(str(self.dir / "base" / "checkpoints"), str(base), str(merged), str(out), method,
                                  c.seed)
            reports[method] = _read_json(out / "expansion.json")
        sizes = {"base": len(load_proto(str(base)).pieces), "merged": len(load_proto(str(merged)).pieces)}
        return {"merge": {"added": merge.added, "merged_size": merge.merged_size}, "fertility": fertility,
                "expansion": reports, "vocab_sizes": sizes}

    def arms(self) -> dict[str, list[str]]:
        from allam_jax.gin_setup import REPO_GIN_DIR
        from allam_jax.sweep import read_variants

        path = Path(self.cfg.arms_file)
        variants = read_variants(str(path if path.is_file() else REPO_GIN_DIR / path))
        if self.cfg.main_arm not in variants:
            raise ConfigError(f"RecipeConfig.main_arm = {self.cfg.main_arm!r} is not a variant of "
                              f"{self.cfg.arms_file} ({list(variants)})")
        fill = self.placeholders()
        out = {}
        for name, bindings in variants.items():
            try:
                out[name] = [string.Template(b).substitute(fill) for b in bindings]
            except (KeyError, ValueError) as e:
                raise ConfigError(f"{self.cfg.arms_file} [{name}]: unknown placeholder {e}; known: "
                                  f"{sorted(fill)}") from None
        return out

    def placeholders(self) -> dict[str, str]:
        sizes = self.vocab_sizes()
        return {"base_checkpoint": str(self.dir / "base" / "checkpoints"),
                "expanded_mean_subtoken": str(self.dir / "expand" / "mean_subtoken"),
                "expanded_random": str(self.dir / "expand" / "random"),
                "base_tokenizer": str(self.tok / "base.model"), "merged_tokenizer": str(self.tok / "merged.model"),
                "base_vocab_size": str(sizes.get("base", "")), "merged_vocab_size": str(sizes.get("merged", ""))}

    def cpt_common(self) -> list[str]:
        """Bindings every arm starts from: the merged vocabulary, the mean-initialised expanded model."""
        c = self.cfg
        return (self.model_bindings(self.vocab_sizes()["merged"]) + self.corpus_bindings(str(self.tok / "merged.model"))
                + ["StepConfig.z_loss_weight = 1e-4",
                   f"TrainerConfig.init_from = {str(self.dir / 'expand' / 'mean_subtoken')!r}"]
                + self.schedule_bindings(c.cpt_steps, c.cpt_learning_rate, c.cpt_warmup_steps)
                + list(c.stage_bindings.get("cpt", ())))

    def stage_cpt(self) -> dict:
        from allam_jax.sweep import run_sweep, summary_table, write_summary

        c = self.cfg
        root = str(self.dir / "cpt")
        rows = run_sweep([c.model_gin, c.data_gin], self.arms(), root, self.cpt_common(), runner=_train)
        write_summary(rows, root)
        log.info("continued pretraining arms:\n%s", summary_table(rows))
        return {"arms": {r["variant"]: r["workdir"] for r in rows}}

    def stage_sft(self) -> dict:
        c = self.cfg
        merged = str(self.tok / "merged.model")
        bindings = self.model_bindings(self.vocab_sizes()["merged"]) + [
            "experiment.data = @SftData()", f"SftData.paths = [{str(self.data / 'align' / 'sft_train.jsonl')!r}]",
            f"SftData.vocabulary = {merged!r}", "SftData.template = @ChatTemplate()", "StepConfig.num_languages = 3",
            f"TrainerConfig.init_from = {str(self.dir / 'cpt' / c.main_arm / 'checkpoints')!r}",
            "OptimizerConfig.weight_decay = 0.0",
        ] + self.schedule_bindings(c.sft_steps, c.sft_learning_rate, max(1, c.sft_steps // 15)) + list(
            c.stage_bindings.get("sft", ()))
        _train([c.model_gin], bindings, str(self.dir / "sft"))
        return {"workdir": str(self.dir / "sft"), "init_from": f"cpt/{c.main_arm}"}

    def stage_dpo(self) -> dict:
        c = self.cfg
        merged = str(self.tok / "merged.model")
        bindings = self.model_bindings(self.vocab_sizes()["merged"]) + [
            "experiment.data = @DpoData()", "experiment.dpo = @DpoConfig()",
            f"DpoData.paths = [{str(self.data / 'align' / 'dpo_train.jsonl')!r}]", f"DpoData.vocabulary = {merged!r}",
            "DpoData.template = @ChatTemplate()", f"DpoConfig.beta = {c.dpo_beta}", "DpoConfig.reference = 'frozen'",
            "StepConfig.num_languages = 3", f"TrainerConfig.init_from = {str(self.dir / 'sft' / 'checkpoints')!r}",
            f"TrainerConfig.batch_size = {max(1, c.batch_size // 2)}", "OptimizerConfig.weight_decay = 0.0",
        ] + self.schedule_bindings(c.dpo_steps, c.dpo_learning_rate, max(1, c.dpo_steps // 10)) + list(
            c.stage_bindings.get("dpo", ()))
        _train([c.model_gin], bindings, str(self.dir / "dpo"))
        return {"workdir": str(self.dir / "dpo"), "init_from": "sft"}

    def stage_eval(self) -> dict:
        from allam_jax.recipe.evaluate import evaluate_recipe

        results = evaluate_recipe(self)
        _write_json(self.dir / "eval" / "results.json", results)
        return {"results": str(self.dir / "eval" / "results.json")}

    def stage_report(self) -> dict:
        from allam_jax.recipe.report import write_report

        return write_report(self)
