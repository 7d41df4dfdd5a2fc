"""Stage (f) of the recipe: bits per byte through training, multiple-choice accuracy and preference metrics.

Every run (the base model, each ablation arm, SFT, DPO) is read back through its own operative
``config.gin``, so the model shape, tokenizer and starting point are the ones it trained with. Each
checkpoint's results are cached in ``eval/cache/``: an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from tqdm.auto import tqdm

from allam_jax import gin_setup
from allam_jax.align.chat import ChatTemplate, encode_prompt
from allam_jax.align.dpo_reference import pair_logprobs, preference_metrics
from allam_jax.align.preference_data import DpoData
from allam_jax.checkpoint.params_io import load_params
from allam_jax.checkpoint.workdir import Workdir
from allam_jax.data.tasks import LANGUAGES
from allam_jax.data.vocabularies import bos_id, get_vocabulary
from allam_jax.eval.readers import read_cloze
from allam_jax.eval.scorer import LoglikelihoodScorer, choice_correct, evaluate_multiple_choice, perplexity
from allam_jax.model import Decoder
from allam_jax.recipe import progressive
from allam_jax.recipe.heldout import perplexity_documents

if TYPE_CHECKING:
    from allam_jax.recipe.stages import Recipe

log = logging.getLogger(__name__)

MC_TASKS = ("en_cloze", "ar_cloze", "translate")
CHAT_TASKS = ("chat_translate", "chat_translate_to_en")
BPB_KEYS = {"en", "ar", "translation"}
STAGE = "@stage"  # a stage of the progressive arm, evaluated as a run of its own: ARM@stageK
FINAL_ONLY = ("sft", "dpo", "rival", "rival_sft")  # runs evaluated at their last step only


class RunInfo:
    """What a training workdir was: model config, tokenizer, starting checkpoint, its saved steps."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        config = Workdir.at(workdir).config_gin
        if not config.is_file():
            raise FileNotFoundError(f"{config} not found: the run did not start (rerun its recipe stage)")
        gin_setup.parse([str(config)])
        experiment = gin_setup.build_experiment()
        self.model = experiment.model
        self.vocabulary: str = experiment.data.describe().vocabulary
        self.init_from: Optional[str] = experiment.trainer.init_from

    def steps(self) -> list[int]:
        ckpts = Workdir.at(self.workdir).checkpoints
        return sorted(int(p.name) for p in ckpts.iterdir() if p.is_dir() and p.name.isdigit()) if ckpts.is_dir() else []


class Evaluator:
    """Scores checkpoints of one model shape and tokenizer; parameters are swapped, never recompiled."""

    def __init__(self, cfg, vocabulary: str, batch_size: int):
        self.cfg = cfg
        self.vocab = get_vocabulary(vocabulary)
        self.bos = bos_id(self.vocab)
        self.scorer = LoglikelihoodScorer(cfg, None, self.encode, self.bos, batch_size=batch_size)

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.vocab.encode(text)]

    def load(self, checkpoint: str) -> None:
        self.scorer.params = load_params(checkpoint, Decoder(self.cfg))

    def bits_per_byte(self, documents: dict[str, list[str]], translations: list[tuple[str, str]]) -> dict[str, float]:
        """Held-out bits per byte per language, and ``translation``: bits per byte of each held-out Arabic
        translation given its English source in the pretraining's translation prompt."""
        out = {lang: perplexity(self.scorer, docs)["bits_per_byte"] for lang, docs in documents.items()}
        scores = self.scorer.loglikelihood(translations)
        n_bytes = sum(len(answer.encode("utf-8")) for _, answer in translations)
        out["translation"] = -sum(ll for ll, _ in scores) / n_bytes / math.log(2)
        return out

    def multiple_choice(self, mc_dir: Path) -> dict[str, dict]:
        out = {}
        for task in MC_TASKS:
            r = evaluate_multiple_choice(self.scorer, read_cloze(str(mc_dir / f"{task}.jsonl")))
            out[task] = {k: r[k] for k in ("acc", "acc_norm", "n")}
        for task in CHAT_TASKS:
            if (mc_dir / f"{task}.jsonl").is_file():  # a workdir's data stage of an earlier version lacks the newer
                out[task] = self.chat_multiple_choice(mc_dir / f"{task}.jsonl")
            else:
                log.warning("%s/%s.jsonl is missing (a data stage of an earlier version): `--redo data` makes it",
                            mc_dir, task)
        return out

    def chat_multiple_choice(self, path: Path) -> dict:
        """The translation question as a chat-template user turn; each answer is scored with its EOS."""
        items = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        requests, spans = [], []
        for item in items:
            context = encode_prompt(item["messages"], self.vocab, ChatTemplate(), self.bos)[1:]  # scorer adds BOS
            spans.append(len(requests))
            requests += [(context, self.encode(c) + [int(self.vocab.eos_id)]) for c in item["choices"]]
        scores = self.scorer.loglikelihood_tokens(requests)
        correct = [choice_correct([scores[start + j][0] for j in range(len(item["choices"]))], item["choices"],
                                  item["gold"]) for item, start in zip(items, spans)]
        return {"acc": float(np.mean([a for a, _ in correct])), "acc_norm": float(np.mean([b for _, b in correct])),
                "n": len(items)}

    def preference(self, pairs: list[dict], seq_len: int) -> dict:
        """How often the model itself gives the chosen answer a higher log-probability than the rejected one."""
        [logp] = pair_logprobs(Decoder(self.cfg), [self.scorer.params], pairs, seq_len)
        wins = logp[:, 0] > logp[:, 1]
        langs = np.asarray([p["lang"] for p in pairs])
        by_language = {LANGUAGES[i]: {"accuracy": float(np.mean(wins[langs == i])), "pairs": int(np.sum(langs == i))}
                       for i in sorted(set(langs.tolist()))}  # the language of the chosen answer
        return {"accuracy": float(np.mean(wins)), "mean_logp_gap": float(np.mean(logp[:, 0] - logp[:, 1])),
                "pairs": len(pairs), "by_language": by_language}


def _cache_name(recipe_dir: Path, checkpoint: str) -> str:
    rel = str(Path(checkpoint).absolute()).replace(str(recipe_dir), "").strip("/")
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", rel) + ".json"


def evaluate_recipe(recipe: "Recipe") -> dict:
    """Results of every run of the recipe (see the module docstring); written to ``eval/results.json``."""
    cfg = recipe.cfg
    cache_dir = recipe.dir / "eval" / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    heldout = recipe.data / "heldout"
    documents = {lang: perplexity_documents(str(heldout / f"{lang}.txt"), cfg.heldout.perplexity_bytes)
                 for lang in ("en", "ar")}
    translate = [json.loads(line) for line in (recipe.data / "mc" / "translate.jsonl").read_text(
        encoding="utf-8").splitlines() if line.strip()]
    translations = [(item["context"], item["choices"][item["gold"]]) for item in translate]
    cpt = json.loads(recipe.marker("cpt").read_text())
    arms = list(cpt["arms"])
    staged = {arm: progressive.stage_workdirs(recipe, arm) for arm in arms if progressive.is_progressive(arm)}
    runs = {"base": recipe.dir / "base", **{arm: recipe.dir / "cpt" / arm for arm in arms if arm not in staged},
            **{f"{arm}{STAGE}{k}": workdir for arm, stages in staged.items() for k, (workdir, _) in enumerate(stages, 1)},
            "sft": recipe.dir / "sft", "dpo": recipe.dir / "dpo"}
    inner = {f"{arm}{STAGE}{k}" for arm, stages in staged.items() for k in range(1, len(stages))}  # not the last
    if recipe.has_rival():
        runs.update(rival=recipe.dir / "rival" / "pretrain", rival_sft=recipe.dir / "rival" / "sft")
    aligned = {cfg.main_arm, "sft", "dpo", "rival_sft"}
    evaluators: dict[tuple, Evaluator] = {}
    dpo_pairs_cache: dict[str, list[dict]] = {}

    def dpo_pairs(vocabulary: str) -> list[dict]:
        """The held-out preference pairs (``dpo_eval.jsonl``, never trained on), tokenised once per vocabulary."""
        if vocabulary not in dpo_pairs_cache:
            data = DpoData(paths=[str(recipe.data / "align" / "dpo_eval.jsonl")], vocabulary=vocabulary,
                           template=ChatTemplate())
            dpo_pairs_cache[vocabulary] = data.load(cfg.seq_len)[: cfg.dpo_eval_pairs]
        return dpo_pairs_cache[vocabulary]

    results: dict = {"runs": {}, "documents": {k: {"count": len(v), "bytes": sum(len(d.encode()) for d in v)}
                                                for k, v in documents.items()}}
    mc_tasks = set(MC_TASKS) | {t for t in CHAT_TASKS if (recipe.data / "mc" / f"{t}.jsonl").is_file()}
    work = _checkpoints_to_evaluate(runs)
    total = sum(len(p) for _, _, p in work)
    bar = tqdm(total=total, desc="eval", unit="ckpt")
    for name, info, points in work:
        key = (info.model, info.vocabulary)
        if key not in evaluators:
            evaluators[key] = Evaluator(info.model, info.vocabulary, cfg.eval_batch_size)
        ev = evaluators[key]
        run = {"tokenizer": Path(info.vocabulary).stem, "vocab_size": info.model.vocab_size,
               "num_params": info.model.num_params(), "init_from": info.init_from, "points": []}
        for i, (step, checkpoint) in enumerate(points):
            final = i == len(points) - 1 and name not in inner
            wanted = {"bpb": lambda: ev.bits_per_byte(documents, translations)}
            if final:
                wanted["mc"] = lambda: ev.multiple_choice(recipe.data / "mc")
            if final and name in aligned:
                wanted["preference"] = lambda: ev.preference(dpo_pairs(info.vocabulary), cfg.seq_len)
            row = _cached_row(cache_dir / _cache_name(recipe.dir, checkpoint), checkpoint, ev, wanted, mc_tasks)
            run["points"].append({"step": step, "checkpoint": checkpoint, "bpb": row["bpb"]})
            if final:
                run["mc"] = row["mc"]
                if "preference" in row:
                    run["preference"] = row["preference"]
            bar.update(1)
        results["runs"][name] = run
    bar.close()
    for arm, stages in staged.items():
        results["runs"][arm] = _join_stages(results["runs"], arm, [start for _, start in stages])
    if "progressive" in cpt:
        results["progressive"] = cpt["progressive"]

    dpo_info = RunInfo(runs["dpo"])
    results["dpo_heldout"] = _dpo_heldout(runs, dpo_info, dpo_pairs(dpo_info.vocabulary), cfg)
    return results


def _join_stages(runs: dict, arm: str, starts: list[int]) -> dict:
    """The progressive arm's stage runs (``ARM@stageK``, taken out of ``runs``) as one run: each stage's points at
    their CPT step (a stage's step 0, its expanded start, follows the last point of the stage before), the final
    stage's accuracies."""
    parts = [runs.pop(f"{arm}{STAGE}{k}") for k in range(1, len(starts) + 1)]
    joined = dict(parts[-1], init_from=parts[0]["init_from"], points=[])
    for k, (part, start) in enumerate(zip(parts, starts), 1):
        joined["points"] += [dict(p, step=p["step"] + start, stage=k) for p in part["points"]]
    joined["stages"] = [{"start_step": start, "vocab_size": p["vocab_size"], "tokenizer": p["tokenizer"]}
                        for p, start in zip(parts, starts)]
    return joined


def _checkpoints_to_evaluate(runs: dict[str, Path]) -> list[tuple[str, "RunInfo", list[tuple[int, str]]]]:
    """(run, its info, (step, checkpoint) points): every saved step, the starting point of continued pretraining
    as step 0, and only the last step of SFT, DPO and the larger rival model."""
    work = []
    for name, workdir in runs.items():
        info = RunInfo(workdir)
        steps = info.steps()
        if not steps:
            raise FileNotFoundError(f"{workdir}/checkpoints holds no step: rerun the recipe stage that trains it")
        points = [(s, str(Workdir.at(workdir).checkpoints / str(s))) for s in steps]
        if name in FINAL_ONLY:
            points = points[-1:]
        elif info.init_from:  # step 0: where continued pretraining started
            points = [(0, info.init_from)] + points
        work.append((name, info, points))
    return work


def _cached_row(cache: Path, checkpoint: str, ev: "Evaluator", wanted: dict, mc_tasks: set) -> dict:
    """A checkpoint's results: from its cache file, measuring (``wanted``: key -> measure) only what is missing
    (a cache of an earlier version may lack tasks or fields); a checkpoint trained again since (another mtime) is
    evaluated again."""
    stamp = Path(checkpoint).stat().st_mtime_ns
    row = json.loads(cache.read_text()) if cache.is_file() else {}
    if row.get("checkpoint_mtime_ns") != stamp:
        row = {"checkpoint_mtime_ns": stamp}
    complete = {"bpb": lambda r: BPB_KEYS <= set(r), "mc": lambda r: mc_tasks <= set(r),
                "preference": lambda r: "by_language" in r}
    missing = [k for k in wanted if k not in row or not complete.get(k, lambda r: True)(row[k])]
    if missing:
        ev.load(checkpoint)
        for key in missing:
            row[key] = wanted[key]()
        cache.write_text(json.dumps(row, indent=1))
    return row


def _dpo_heldout(runs: dict[str, Path], dpo_info: "RunInfo", pairs: list[dict], cfg) -> dict:
    """DPO's implicit reward on held-out pairs, against its frozen reference (the SFT model)."""
    policy = load_params(str(Workdir.at(runs["dpo"]).checkpoints), Decoder(dpo_info.model))
    reference = load_params(str(Workdir.at(runs["sft"]).checkpoints), Decoder(dpo_info.model))
    return preference_metrics(Decoder(dpo_info.model), policy, reference, pairs, cfg.seq_len, cfg.dpo_beta)
