"""The stages of ``allam recipe``: each writes its outputs under the workdir, then ``stages/NAME.json``; a
stage whose marker exists is skipped, and a training stage cut short resumes from its checkpoints.

Layout of a recipe workdir::

    data/train/ data/heldout/ data/align/ data/mc/      splits, alignment sets, evaluation items
    tokenizer/{base,arabic,merged}.model fertility.json
    base/                        (a) English base model (the stand-in for Llama-2)
    expand/{fitted,mean_subtoken,random}/ (b) the base model grown to the merged vocabulary
    cpt/ARM/                     (c) continued pretraining, one workdir per ablation arm
    cpt/progressive/{expand,stage}K/  the progressive expansion arm's stages (recipe/progressive.py)
    sft/ dpo/                    (d, e) alignment of the main arm
    rival/{pretrain,sft}/        a 2-4x larger model aligned with SFT only (the abstract's "beats a larger model")
    eval/                        (f) results.json (+ a cache per evaluated checkpoint)
    report.md plots/             (g)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from allam_jax import gin_setup, runner
from allam_jax.align.bundled import make_alignment_sets
from allam_jax.align.chat import ChatTemplate
from allam_jax.align.preference_data import DpoData
from allam_jax.align.sft_data import SftData
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.core.errors import ConfigError
from allam_jax.core.partitioning import PartitioningConfig
from allam_jax.core.paths import write_text_atomically
from allam_jax.data import corpora
from allam_jax.data.pipeline import SeqioData
from allam_jax.data.tasks import CorpusPaths
from allam_jax.gin_setup import Override
from allam_jax.model.config import ModelConfig
from allam_jax.objectives.dpo import DpoConfig
from allam_jax.objectives.lm import StepConfig
from allam_jax.recipe import progressive, provenance
from allam_jax.recipe.config import EXPAND_METHODS, STAGES, TRAINING_STAGES, RecipeConfig, seed_arm
from allam_jax.recipe.evaluate import evaluate_recipe
from allam_jax.recipe.heldout import build_items, split_corpora
from allam_jax.recipe.report import FORGETTING_TOLERANCE, write_report
from allam_jax.sweep import read_variants, run_sweep, summary_table, write_summary
from allam_jax.tokenizer.bpe import iter_documents, merge_bpe, train_bpe
from allam_jax.tokenizer.expand import expand_checkpoint
from allam_jax.tokenizer.fertility import fertility_table
from allam_jax.tokenizer.fit_head import HeadFit
from allam_jax.tokenizer.interface import load_tokenizer
from allam_jax.tokenizer.merge import merge_tokenizers
from allam_jax.tokenizer.train import train_tokenizer
from allam_jax.train.heldout_watch import HeldoutWatch
from allam_jax.train.loop import TrainerConfig
from allam_jax.train.optimizer import OptimizerConfig

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, obj) -> None:
    write_text_atomically(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _train(gin_files: Sequence[str], bindings: Sequence[str], workdir: str, overrides: Sequence[Override] = ()) -> int:
    """What ``allam train`` runs, in this process: the recipe's typed settings go in as overrides, between the
    gin files and the user's bindings (``stage_bindings``, an arm's bindings), which still win."""
    log.info("training %s", workdir)
    runner.train_from_gin(gin_files, bindings, workdir, overrides)
    return 0


@dataclasses.dataclass(frozen=True)
class TrainPlan:
    """One training stage (or ablation arm): gin files, the recipe's typed overrides, the user's bindings."""

    gin_files: tuple[str, ...]
    overrides: tuple[Override, ...]
    bindings: tuple[str, ...]
    workdir: str


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
        """Finished; continued pretraining only with every arm now asked for (``--seeds 3`` on a finished one-seed
        workdir trains the new seeds' arms, the finished arms are skipped)."""
        if stage == "cpt" and self.marker(stage).is_file():
            return set(self.arm_names()) <= set(_read_json(self.marker(stage)).get("arms", {}))
        return self.marker(stage).is_file()

    def arm_names(self) -> list[str]:
        """The continued-pretraining arms, seeds included, without resolving their bindings."""
        path = Path(self.cfg.arms_file)
        names = list(read_variants(str(path if path.is_file() else gin_setup.REPO_GIN_DIR / path)))
        absent = [n for n in self.cfg.seeded_arms if n not in names and n != progressive.ARM]
        if self.cfg.seeds > 1 and absent:
            log.warning("RecipeConfig.seeded_arms %s are not arms of %s (%s): trained with one seed only", absent,
                        self.cfg.arms_file, ", ".join(names))
        seeded = [seed_arm(n, k) for n in self.cfg.seeded_arms if n in names for k in range(1, self.cfg.seeds)]
        return names + seeded + progressive.arm_names(self.cfg)

    def arm_workdir(self, arm: str) -> Path:
        """Where an arm's final model is: ``cpt/ARM``, or the last stage of the progressive arm."""
        return progressive.stage_workdirs(self, arm)[-1][0] if progressive.is_progressive(arm) else self.dir / "cpt" / arm

    def expand_summary(self) -> dict:
        return _read_json(self.marker("expand"))

    def run(self, stop_after: str = "report", redo: Sequence[str] = (), progress: Callable[[str], None] = print) -> dict:
        """Runs every stage up to ``stop_after`` that has not finished; returns ``{stage: summary}``."""
        if stop_after not in STAGES:
            raise ConfigError(f"unknown stage {stop_after!r}; stages: {', '.join(STAGES)}")
        bad = [s for s in redo if s not in STAGES]
        if bad:
            raise ConfigError(f"unknown stage(s) {bad} in --redo; stages: {', '.join(STAGES)}")
        for stage in redo:
            self.marker(stage).unlink(missing_ok=True)
        summaries, ran, stale = {}, [], False
        for stage in STAGES[: STAGES.index(stop_after) + 1]:
            if stale:  # an earlier stage ran because it was incomplete: what follows it is out of date
                self.marker(stage).unlink(missing_ok=True)
            if self.done(stage):
                progress(f"[recipe] {stage}: done already (delete {self.marker(stage)} or use --redo {stage} to rerun)")
                summaries[stage] = _read_json(self.marker(stage))
                continue
            progress(f"[recipe] {stage} ...")
            stale = stale or stage not in redo  # incomplete or new (a stage added since): what follows is redone
            start = time.perf_counter()
            summary = getattr(self, f"stage_{stage}")()
            summary["seconds"] = round(time.perf_counter() - start, 1)
            _write_json(self.marker(stage), summary)
            summaries[stage] = summary
            ran.append(stage)
            progress(f"[recipe] {stage}: done in {summary['seconds']:.0f} s")
        if ran:
            provenance.record(self.dir, self.cfg, ran)
        return summaries

    def model_overrides(self, vocab_size: int, batch_size: int = 0) -> list[Override]:
        c = self.cfg
        return [Override(ModelConfig, vocab_size=vocab_size, max_seq_len=c.seq_len),
                Override(TrainerConfig, batch_size=batch_size or c.batch_size, seq_len=c.seq_len, seed=c.seed),
                Override(PartitioningConfig, mesh_shape=(1, -1, 1))]

    def schedule_overrides(self, steps: int, lr: float, warmup: int) -> list[Override]:
        """A cosine schedule over ``steps``; ``curve_points`` evenly spaced checkpoints, all kept (the curves)."""
        c = self.cfg
        return [Override(TrainerConfig, num_steps=steps, checkpoint_every=c.checkpoint_every(steps),
                         keep_checkpoints=c.curve_points + 1, log_every=max(1, steps // 20)),
                Override(OptimizerConfig, learning_rate=lr, warmup_steps=warmup, decay_steps=steps,
                         schedule="cosine")]

    def corpus_overrides(self, vocabulary: str, rates: dict[str, float] | None = None) -> list[Override]:
        train = self.data / "train"
        mixture = {"rates": rates} if rates else {}
        return [Override(SeqioData, vocabulary=vocabulary, seed=self.cfg.seed, shuffle_buffer=self.cfg.shuffle_buffer,
                         **mixture),
                Override(CorpusPaths, en=[str(train / "en.txt")], ar=[str(train / "ar.txt")],
                         parallel=[str(train / "parallel.jsonl")], translated=[])]

    def alignment_overrides(self, data_cls: type, split: str, init_from: str) -> list[Override]:
        """SFT/DPO data (chat template, three language ids), starting from ``init_from``, no weight decay."""
        return [Override(gin_setup.build_experiment, data=data_cls),
                Override(data_cls, paths=[str(self.data / "align" / split)], vocabulary=str(self.tokenizer("merged")),
                         template=ChatTemplate),
                Override(StepConfig, num_languages=3), Override(TrainerConfig, init_from=init_from),
                Override(OptimizerConfig, weight_decay=0.0)]

    def user_bindings(self, stage: str) -> tuple[str, ...]:
        return tuple(self.cfg.stage_bindings.get(stage, ()))

    def tokenizer(self, name: str) -> Path:
        """``tokenizer/{base,arabic,merged}``: ``.model`` (SentencePiece) or ``.json`` (byte-level BPE), as
        ``RecipeConfig.tokenizer_kind`` says."""
        return self.tok / (name + (".json" if self.cfg.tokenizer_kind == "bpe" else ".model"))

    def vocab_sizes(self) -> dict[str, int]:
        return _read_json(self.marker("expand"))["vocab_sizes"] if self.done("expand") else {}

    # ------------------------------------------------------------ stages

    def stage_data(self) -> dict:
        bundled = Path(self.cfg.bundled_dir)
        if not all((bundled / n).is_file() for n in provenance.INPUTS):
            log.info("bundled corpora missing in %s: running `allam data prepare`", bundled)
            corpora.prepare(str(bundled))
        differences = corpora.bundle_differences(str(bundled))
        if differences:
            log.warning("the bundled corpora in %s are not the pinned ones, so the numbers may differ from the "
                        "documented ones: %s", bundled, "; ".join(differences))
        counts = split_corpora(str(bundled), str(self.data), self.cfg.heldout)
        align = make_alignment_sets(str(self.data / "train" / "parallel.jsonl"), str(self._mkdir(self.data / "align")),
                                    seed=self.cfg.seed)
        items = build_items(str(self.data / "heldout"), str(self.data / "mc"), self.cfg.heldout)
        return {"split": counts, "alignment": align, "mc_items": items}

    def _mkdir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stage_base(self) -> dict:
        c = self.cfg
        base_model = self.tokenizer("base")
        if not base_model.is_file():
            self._mkdir(self.tok)
            self.train_tokenizer([str(self.data / "train" / "en.txt")], c.base_vocab_size, base_model)
        self.train(self.plan("base"))
        return {"tokenizer": str(base_model), "workdir": str(self.dir / "base")}

    def train_tokenizer(self, files: list[str], vocab_size: int, out: Path, base: Optional[Path] = None) -> None:
        """SentencePiece (Llama-2 conventions), or byte-level BPE: the base with Llama-3's pre-tokenizer, the
        Arabic pieces with the base's."""
        if self.cfg.tokenizer_kind == "bpe":
            train_bpe(iter_documents(files), vocab_size, str(out), base=str(base) if base else None)
            return

        train_tokenizer(files, vocab_size, str(out), also_undiacritised=bool(base) and
                        self.cfg.arabic_also_undiacritised)

    def watch_override(self, steps: int) -> Override:
        """Held-out English and Arabic bits/byte four times per run, warning when English rises past the report's
        forgetting tolerance (the arms' training curves of forgetting)."""
        held = self.data / "heldout"
        return Override(HeldoutWatch, paths={"en": str(held / "en.txt"), "ar": str(held / "ar.txt")},
                        every=max(1, steps // 4), max_bytes=8000, guard="en", max_rise=FORGETTING_TOLERANCE,
                        action="warn")

    def plan(self, stage: str) -> TrainPlan:
        """The run a training stage makes (``cpt``: every arm starts from this, see :meth:`arms`)."""
        if stage not in TRAINING_STAGES:
            raise ConfigError(f"{stage!r} is not a training stage; training stages: {', '.join(TRAINING_STAGES)}")
        gin_files, overrides, workdir = getattr(self, f"_plan_{stage}")()
        bindings = self.user_bindings(stage)
        if stage == "rival_sft":  # the small model's SFT, user bindings included
            bindings = self.user_bindings("sft") + bindings
        if stage.startswith("rival"):
            bindings = tuple(self.cfg.rival_model_bindings) + bindings
        return TrainPlan(tuple(gin_files), tuple(overrides), bindings, str(workdir))

    def _plan_base(self):
        c = self.cfg
        overrides = (self.model_overrides(c.base_vocab_size)
                     + self.corpus_overrides(str(self.tokenizer("base")), {"en_pretrain": 1.0})
                     + [Override(StepConfig, z_loss_weight=1e-4)]
                     + self.schedule_overrides(c.base_steps, c.base_learning_rate, max(1, c.base_steps // 20)))
        return (c.model_gin, c.data_gin), overrides, self.dir / "base"

    def _plan_cpt(self):  # the merged vocabulary, the expanded model (RecipeConfig.expand_init)
        c = self.cfg
        overrides = (self.model_overrides(self.vocab_sizes()["merged"])
                     + self.corpus_overrides(str(self.tokenizer("merged")))
                     + [Override(StepConfig, z_loss_weight=1e-4),
                        Override(TrainerConfig, init_from=str(self.dir / "expand" / c.expand_init)),
                        self.watch_override(c.cpt_steps)]
                     + self.schedule_overrides(c.cpt_steps, c.cpt_learning_rate, c.cpt_warmup_steps))
        return (c.model_gin, c.data_gin), overrides, self.dir / "cpt"

    def _plan_sft(self, init_from: str = "", workdir: Optional[Path] = None):
        c = self.cfg
        init_from = init_from or str(Workdir.at(self.dir / "cpt" / c.main_arm).checkpoints)
        overrides = (self.model_overrides(self.vocab_sizes()["merged"])
                     + self.alignment_overrides(SftData, "sft_train.jsonl", init_from)
                     + self.schedule_overrides(c.sft_steps, c.sft_learning_rate, max(1, c.sft_steps // 15)))
        return (c.model_gin,), overrides, workdir or self.dir / "sft"

    def _plan_dpo(self):
        c = self.cfg
        overrides = (self.model_overrides(self.vocab_sizes()["merged"], batch_size=max(1, c.batch_size // 2))
                     + self.alignment_overrides(DpoData, "dpo_train.jsonl", str(Workdir.at(self.dir / "sft").checkpoints))
                     + [Override(gin_setup.build_experiment, objective="dpo"),
                        Override(DpoConfig, beta=c.dpo_beta, reference="frozen")]
                     + self.schedule_overrides(c.dpo_steps, c.dpo_learning_rate, max(1, c.dpo_steps // 10)))
        return (c.model_gin,), overrides, self.dir / "dpo"

    def rival_steps(self) -> int:
        return self.cfg.rival_steps or self.cfg.base_steps + self.cfg.cpt_steps

    def _plan_rival(self):
        """The larger model: from scratch on the merged vocabulary and the main arm's mixture, as many steps as the
        small model's base and CPT together (the same tokens seen), the base model's learning rate."""
        c, steps = self.cfg, self.rival_steps()
        overrides = (self.model_overrides(self.vocab_sizes()["merged"])
                     + self.corpus_overrides(str(self.tokenizer("merged")))
                     + [Override(StepConfig, z_loss_weight=1e-4)]
                     + self.schedule_overrides(steps, c.base_learning_rate, max(1, steps // 20)))
        return (c.model_gin, c.data_gin), overrides, self.dir / "rival" / "pretrain"

    def _plan_rival_sft(self):
        """Its lower-quality alignment: the small model's SFT (data, steps, learning rate), and no DPO."""
        return self._plan_sft(str(Workdir.at(self.dir / "rival" / "pretrain").checkpoints),
                              self.dir / "rival" / "sft")

    @staticmethod
    def train(plan: TrainPlan) -> None:
        _train(plan.gin_files, plan.bindings, plan.workdir, plan.overrides)

    def stage_expand(self) -> dict:
        c = self.cfg
        base, arabic, merged = self.tokenizer("base"), self.tokenizer("arabic"), self.tokenizer("merged")
        self.train_tokenizer([str(self.data / "train" / "ar.txt")], c.arabic_vocab_size, arabic, base=base)
        if c.tokenizer_kind == "bpe":
            merge = merge_bpe(str(base), str(arabic), str(merged), c.pad_vocab_to_multiple)
        else:
            merge = merge_tokenizers(str(base), str(arabic), str(merged), c.pad_vocab_to_multiple)
        heldout = [str(self.data / "heldout" / "en.txt"), str(self.data / "heldout" / "ar.txt")]
        fertility = fertility_table([str(base), str(merged)], heldout)
        for row in fertility:
            row["tokenizer"] = "base" if row["model"] == str(base) else "merged"
        _write_json(self.tok / "fertility.json", fertility)
        reports = {}
        sizes = {"base": load_tokenizer(str(base)).vocab_size, "merged": load_tokenizer(str(merged)).vocab_size}
        fit = self.head_fit(sizes["merged"])
        for method in EXPAND_METHODS:
            out = self.dir / "expand" / method
            if not (out / "expansion.json").is_file():
                base_ckpt = str(Workdir.at(self.dir / "base").checkpoints)
                expand_checkpoint(base_ckpt, str(base), str(merged), str(out), method,
                                  c.seed, fit=fit if method == "fitted" else None)
            reports[method] = _read_json(out / "expansion.json")
        return {"merge": {"added": merge.added, "merged_size": merge.merged_size}, "fertility": fertility,
                "expansion": reports, "vocab_sizes": sizes}

    def head_fit(self, vocab_size: int) -> HeadFit:
        """What a `fitted` expansion fits the new output rows on: the base model's shape grown to ``vocab_size``,
        Arabic training text for the new tokens, English for the predictions to keep."""
        gin_setup.parse([str(Workdir.at(self.dir / "base").config_gin)])
        return HeadFit(dataclasses.replace(gin_setup.model_config(), vocab_size=vocab_size),
                       str(self.data / "train" / "ar.txt"), str(self.data / "train" / "en.txt"))

    def seed_bindings(self, k: int) -> list[str]:
        """The bindings of seed offset ``k`` (another data order; none for k = 0)."""
        c = self.cfg
        return [f"TrainerConfig.seed = {c.seed + k}", f"SeqioData.seed = {c.seed + k}"] if k else []

    def arms(self) -> dict[str, list[str]]:
        path = Path(self.cfg.arms_file)
        variants = read_variants(str(path if path.is_file() else gin_setup.REPO_GIN_DIR / path))
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
        return {**out, **self.seed_arms(out)}

    def seed_arms(self, arms: dict[str, list[str]]) -> dict[str, list[str]]:
        """``ARM_seedK`` for K in 1..seeds-1 of each seeded arm: the same bindings, another data order."""
        c = self.cfg
        return {seed_arm(name, k): arms[name] + self.seed_bindings(k)
                for name in c.seeded_arms if name in arms for k in range(1, c.seeds)}

    def placeholders(self) -> dict[str, str]:
        sizes = self.vocab_sizes()
        return {"base_checkpoint": str(Workdir.at(self.dir / "base").checkpoints),
                "expanded_mean_subtoken": str(self.dir / "expand" / "mean_subtoken"),
                "expanded_fitted": str(self.dir / "expand" / "fitted"),
                "expanded_random": str(self.dir / "expand" / "random"),
                "base_tokenizer": str(self.tokenizer("base")), "merged_tokenizer": str(self.tokenizer("merged")),
                "base_vocab_size": str(sizes.get("base", "")), "merged_vocab_size": str(sizes.get("merged", "")),
                "embeddings_first_steps": str(max(1, self.cfg.cpt_steps // 5))}

    def stage_cpt(self) -> dict:
        plan = self.plan("cpt")

        def runner(gin_files: Sequence[str], bindings: Sequence[str], workdir: str) -> int:
            return _train(gin_files, bindings, workdir, plan.overrides)

        rows = run_sweep(plan.gin_files, self.arms(), plan.workdir, plan.bindings, runner=runner)
        write_summary(rows, plan.workdir)
        log.info("continued pretraining arms:\n%s", summary_table(rows))
        arms = {r["variant"]: r["workdir"] for r in rows}
        for k, name in enumerate(progressive.arm_names(self.cfg)):
            arms[name] = progressive.train(self, name, plan.bindings + tuple(self.seed_bindings(k)), _train)
        extra = {"progressive": progressive.summary(self)} if self.cfg.progressive_stages else {}
        return {"arms": arms, **extra}

    def stage_sft(self) -> dict:
        self.train(self.plan("sft"))
        return {"workdir": str(self.dir / "sft"), "init_from": f"cpt/{self.cfg.main_arm}"}

    def stage_dpo(self) -> dict:
        self.train(self.plan("dpo"))
        return {"workdir": str(self.dir / "dpo"), "init_from": "sft"}

    def stage_rival(self) -> dict:
        if not self.cfg.rival_model_bindings:
            return {"skipped": "RecipeConfig.rival_model_bindings is empty"}
        pretrain, sft = self.plan("rival"), self.plan("rival_sft")
        self.train(pretrain)
        self.train(sft)
        return {"pretrain": pretrain.workdir, "sft": sft.workdir, "model_bindings": list(self.cfg.rival_model_bindings),
                "steps": self.rival_steps()}

    def has_rival(self) -> bool:
        return self.done("rival") and "sft" in _read_json(self.marker("rival"))

    def stage_eval(self) -> dict:
        results = evaluate_recipe(self)
        _write_json(self.dir / "eval" / "results.json", results)
        return {"results": str(self.dir / "eval" / "results.json")}

    def stage_report(self) -> dict:
        return write_report(self)
