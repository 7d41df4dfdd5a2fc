"""Stage (g) of the recipe: ``report.md`` with PNG plots and the claims table.

Each ALLaM claim is tested with a stated rule, and the verdict follows from the numbers alone:
accuracies differ "clearly" when the gap exceeds twice its binomial standard error; bits per byte
(lower is better) when the relative gap exceeds ``BPB_TOLERANCE``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from allam_jax.recipe import progressive
from allam_jax.recipe.config import is_seed_run
from allam_jax.train.metrics import read_metrics

if TYPE_CHECKING:
    from allam_jax.recipe.stages import Recipe

BPB_TOLERANCE = 0.01  # 1% relative: below this, two bits-per-byte numbers count as the same
FORGETTING_TOLERANCE = 0.05  # English may get at most 5% worse (relative bits per byte) and still "not forget"

HOLDS, UNCLEAR, FAILS = "holds", "no clear difference", "does not hold"
NOT_ARMS = ("base", "sft", "dpo", "rival", "rival_sft")  # the runs of results.json that are not CPT arms
MC_COLUMNS = ("en_cloze", "ar_cloze", "translate", "chat_translate", "chat_translate_to_en")


SYNTHETIC_PAIRS = ("The preference pairs are synthetic, made from the bundled parallel pairs "
                   "(`align/bundled.py`): the chosen answer is the true translation; the rejected one is, in equal "
                   "shares, the source echoed back untranslated, the translation with its words reversed, or the "
                   "translation of another pair. They test that DPO learns a preference, not human preference data.")


def final_bpb(run: dict, lang: str) -> float:
    return run["points"][-1]["bpb"][lang]


def start_bpb(run: dict, lang: str) -> float:
    return run["points"][0]["bpb"][lang]


def accuracy_gap(a: dict, b: dict, key: str = "acc_norm", n_key: str = "n") -> tuple[float, float]:
    """``a - b`` and twice its standard error (two independent binomial proportions)."""
    pa, pb = a[key], b[key]
    se = math.sqrt(pa * (1 - pa) / max(a[n_key], 1) + pb * (1 - pb) / max(b[n_key], 1))
    return pa - pb, 2 * se


def above_chance(m: dict, chance: float = 0.25) -> bool:
    """acc_norm above ``chance`` by more than two standard errors of a guesser's accuracy on ``n`` items."""
    return m["acc_norm"] - chance > 2 * math.sqrt(chance * (1 - chance) / max(m["n"], 1))


def verdict_accuracy(gap: float, two_se: float) -> str:
    if gap > two_se:
        return HOLDS
    return UNCLEAR if gap > -two_se else FAILS


def verdict_lower(new: float, ref: float, tolerance: float = BPB_TOLERANCE) -> str:
    """``new`` better than ``ref`` when lower by more than ``tolerance`` (relative)."""
    rel = (new - ref) / ref
    if rel < -tolerance:
        return HOLDS
    return UNCLEAR if rel <= tolerance else FAILS


def seed_values(runs: dict, arm: str, read, lang: str) -> list[float]:
    """``read(run, lang)`` of ``arm`` and of its other seeds' runs (``ARM_seedK``), in seed order."""
    seeds = sorted((r for r in runs if is_seed_run(r) and r.rsplit("_seed", 1)[0] == arm),
                   key=lambda r: int(r.rsplit("_seed", 1)[1]))
    return [read(runs[r], lang) for r in [arm, *seeds]]


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0)


def verdict_lower_seeded(new: list[float], ref: list[float]) -> str:
    """``new`` lower than ``ref``: with several seeds on either side, by more than two standard errors of the
    difference of the means; with one seed each, by more than ``BPB_TOLERANCE`` (relative)."""
    if max(len(new), len(ref)) < 2:
        return verdict_lower(new[0], ref[0])
    (m_new, se_new), (m_ref, se_ref) = mean_se(new), mean_se(ref)
    two_se = 2 * math.sqrt(se_new ** 2 + se_ref ** 2)
    return HOLDS if m_new - m_ref < -two_se else (FAILS if m_new - m_ref > two_se else UNCLEAR)


def shown(values: list[float]) -> str:
    """``1.931``, or ``1.931 ± 0.004`` (mean ± standard error) over several seeds."""
    mean, se = mean_se(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {se:.3f}"


def lower_rule(seeds: int) -> str:
    return f"by more than 2 s.e. over {seeds} seeds" if seeds > 1 else f"by >{BPB_TOLERANCE:.0%}"


def fertility_of(fertility: list[dict], tokenizer: str, lang: str) -> Optional[float]:
    for row in fertility:
        if row["tokenizer"] == tokenizer and row["language"] == lang and row.get("register", "all") == "all":
            return row["tokens_per_word"]
    return None


def claims(results: dict, fertility: list[dict], main: str = "full", init: str = "fitted") -> list[dict]:
    """``[{claim, evidence, verdict, rule}]`` from the evaluation results; arms missing from the sweep are skipped."""
    runs = results["runs"]
    rows = [_forgetting(runs, main), _expansion(runs, main, fertility), _initialisation(runs, main, init),
            _translated(runs, main), _alignment(results, main), _both_languages(results, main), _rival(results, main),
            _progressive(results, main)]
    return [row for row in rows if row is not None]


def _forgetting(runs: dict, main: str) -> dict:
    full, base = runs[main], runs["base"]
    en_full, en_base = seed_values(runs, main, final_bpb, "en"), final_bpb(base, "en")
    rel = (mean_se(en_full)[0] - en_base) / en_base
    evidence = (f"English bits/byte: base {en_base:.3f} → after mixture CPT {shown(en_full)} ({rel:+.1%}); English "
                f"cloze acc_norm {base['mc']['en_cloze']['acc_norm']:.2f} → {full['mc']['en_cloze']['acc_norm']:.2f}")
    if "arabic_only" in runs:
        en_ar_only = seed_values(runs, "arabic_only", final_bpb, "en")
        evidence += f"; Arabic-only control {shown(en_ar_only)} ({(mean_se(en_ar_only)[0] - en_base) / en_base:+.1%})"
    return {"claim": "Continued pretraining on the Arabic/English/translated mixture does not catastrophically "
                     "forget English", "evidence": evidence,
            "verdict": HOLDS if rel <= FORGETTING_TOLERANCE else FAILS,
            "rule": f"English bits/byte rises by at most {FORGETTING_TOLERANCE:.0%}"}


def _expansion(runs: dict, main: str, fertility: list[dict]) -> Optional[dict]:
    if "no_expansion" not in runs:
        return None
    fb, fm = fertility_of(fertility, "base", "ar"), fertility_of(fertility, "merged", "ar")
    ar_full, ar_none = (seed_values(runs, arm, final_bpb, "ar") for arm in (main, "no_expansion"))
    bpb_verdict = verdict_lower_seeded(ar_full, ar_none)
    verdict = HOLDS if (fm < fb and bpb_verdict == HOLDS) else (UNCLEAR if fm < fb and bpb_verdict == UNCLEAR
                                                                else FAILS)
    return {"claim": "Vocabulary expansion helps Arabic",
            "evidence": f"Arabic tokens/word {fb:.2f} → {fm:.2f} ({fb / fm:.1f}× shorter sequences); Arabic "
                        f"bits/byte at equal steps: expanded {shown(ar_full)} vs not expanded {shown(ar_none)}",
            "verdict": verdict,
            "rule": f"fewer Arabic tokens per word and lower Arabic bits/byte ({lower_rule(len(ar_full))}) at equal "
                    "steps"}


def _initialisation(runs: dict, main: str, init: str) -> Optional[dict]:
    full, en_base = runs[main], final_bpb(runs["base"], "en")
    if "random_init" not in runs:
        return None
    rnd = runs["random_init"]
    ar_full, ar_rnd = (seed_values(runs, arm, final_bpb, "ar") for arm in (main, "random_init"))
    # the start is one checkpoint per arm whatever the seed: the fixed rule there, seeds after CPT
    start, final = verdict_lower(start_bpb(full, "ar"), start_bpb(rnd, "ar")), verdict_lower_seeded(ar_full, ar_rnd)
    en_shift = (start_bpb(full, "en") - en_base) / en_base
    verdict = (HOLDS if start == final == HOLDS and abs(en_shift) <= BPB_TOLERANCE
               else FAILS if FAILS in (start, final) else UNCLEAR)
    evidence = (f"Arabic bits/byte at the start {start_bpb(full, 'ar'):.3f} ({init}) vs {start_bpb(rnd, 'ar'):.3f} "
                f"(random); after CPT {shown(ar_full)} vs {shown(ar_rnd)}; English at the "
                f"start {start_bpb(full, 'en'):.3f} vs {start_bpb(rnd, 'en'):.3f} (base {en_base:.3f}: "
                f"{en_shift:+.1%} vs {(start_bpb(rnd, 'en') - en_base) / en_base:+.1%})")
    if "mean_subtoken_init" in runs and init != "mean_subtoken":
        mean = runs["mean_subtoken_init"]
        evidence += (f"; ALLaM's mean-of-sub-token rows: Arabic {start_bpb(mean, 'ar'):.3f} at the start, "
                     f"{final_bpb(mean, 'ar'):.3f} after CPT, English {start_bpb(mean, 'en'):.3f} at the start")
    return {"claim": f"Initialising the new rows from the base model (`{init}`) beats random initialisation",
            "evidence": evidence, "verdict": verdict,
            "rule": f"lower Arabic bits/byte than random rows at the start (by >1%) and after the same steps "
                    f"({lower_rule(len(ar_full))}), with English at the start within 1% of the base model"}


def _translated(runs: dict, main: str) -> Optional[dict]:
    full = runs[main]
    if "no_translated" not in runs:
        return None
    nt = runs["no_translated"]
    gap, two_se = accuracy_gap(full["mc"]["translate"], nt["mc"]["translate"])
    tr_full, tr_nt = (seed_values(runs, arm, final_bpb, "translation") for arm in (main, "no_translated"))
    return {"claim": "Translated (parallel) data helps",
            "evidence": f"bits/byte of held-out Arabic translations given the English: {shown(tr_full)} with vs "
                        f"{shown(tr_nt)} without; translation choice acc_norm "
                        f"{full['mc']['translate']['acc_norm']:.2f} vs {nt['mc']['translate']['acc_norm']:.2f} "
                        f"(gap {gap:+.2f}, 2 s.e. {two_se:.2f}); Arabic bits/byte {final_bpb(full, 'ar'):.3f} "
                        f"vs {final_bpb(nt, 'ar'):.3f}",
            "verdict": verdict_lower_seeded(tr_full, tr_nt),
            "rule": f"lower bits/byte ({lower_rule(len(tr_full))}) on held-out translations at equal steps"}


def _alignment(results: dict, main: str) -> Optional[dict]:
    runs = results["runs"]
    full = runs[main]
    sft, dpo = runs.get("sft"), runs.get("dpo")
    if not (sft and dpo and all("preference" in r for r in (full, sft, dpo))):
        return None
    h = results.get("dpo_heldout", {})
    pref = {k: runs[k]["preference"] for k in (main, "sft", "dpo")}
    gap, two_se = accuracy_gap(pref["dpo"], pref[main], "accuracy", "pairs")
    dpo_ok = h.get("rewards/accuracy", 0) > 0.5 and h.get("rewards/margins", 0) > 0
    verdict = verdict_accuracy(gap, two_se)
    if verdict == HOLDS and not dpo_ok:
        verdict = UNCLEAR
    tax = {lang: final_bpb(dpo, lang) - final_bpb(full, lang) for lang in ("en", "ar")}
    return {"claim": "Alignment (SFT, then DPO) helps",
            "evidence": f"held-out synthetic preference pairs (rejected: echoed source, reversed words or a "
                        f"mismatched translation) where the model's own log-probability favours the chosen "
                        f"answer: CPT {pref[main]['accuracy']:.2f} → SFT {pref['sft']['accuracy']:.2f} → DPO "
                        f"{pref['dpo']['accuracy']:.2f} (gap {gap:+.2f}, 2 s.e. {two_se:.2f}); DPO's "
                        f"held-out reward accuracy {h.get('rewards/accuracy', float('nan')):.2f}, margin "
                        f"{h.get('rewards/margins', float('nan')):+.3f}; chat translation acc_norm "
                        f"{full['mc']['chat_translate']['acc_norm']:.2f} → {sft['mc']['chat_translate']['acc_norm']:.2f}"
                        f" → {dpo['mc']['chat_translate']['acc_norm']:.2f}; cost on plain text: bits/byte "
                        f"{tax['en']:+.3f} en, {tax['ar']:+.3f} ar",
            "verdict": verdict,
            "rule": "DPO prefers the chosen answer more often than CPT by >2 s.e., with held-out reward "
                    "accuracy > 0.5 and a positive margin"}


def _both_languages(results: dict, main: str) -> Optional[dict]:
    """The abstract's "aligned models improve both in Arabic and English from their base": held-out preference
    pairs split by the language of the answer (translations into Arabic, into English), CPT against DPO."""
    runs = results["runs"]
    full, sft, dpo = runs[main], runs.get("sft"), runs.get("dpo")
    if not (sft and dpo and all("by_language" in r.get("preference", {}) for r in (full, sft, dpo))):
        return None
    verdicts, parts = [], []
    for lang, name in (("ar", "Arabic"), ("en", "English")):
        cpt, after = (r["preference"]["by_language"].get(lang) for r in (full, dpo))
        if not (cpt and after):
            return None
        gap, two_se = accuracy_gap(after, cpt, "accuracy", "pairs")
        verdicts.append(verdict_accuracy(gap, two_se))
        parts.append(f"{name} answers: CPT {cpt['accuracy']:.2f} → SFT "
                     f"{sft['preference']['by_language'][lang]['accuracy']:.2f} → DPO {after['accuracy']:.2f} (gap "
                     f"{gap:+.2f}, 2 s.e. {two_se:.2f}, {after['pairs']} pairs)")
    chat = "; ".join(f"chat translation {d} acc_norm " + " → ".join(f"{r['mc'][t]['acc_norm']:.2f}" for r in (full, sft, dpo))
                     for d, t in (("into Arabic", "chat_translate"), ("into English", "chat_translate_to_en"))
                     if all(t in r["mc"] for r in (full, sft, dpo)))
    return {"claim": "The aligned model improves in both Arabic and English from its base (the CPT model)",
            "evidence": "held-out preference pairs favoured by the model, by the language of the answer: "
                        + "; ".join(parts) + (f"; {chat}" if chat else ""),
            "verdict": HOLDS if all(v == HOLDS for v in verdicts) else (FAILS if FAILS in verdicts else UNCLEAR),
            "rule": "DPO prefers the chosen answer more often than CPT by >2 s.e. for Arabic answers and for "
                    "English answers"}


def _rival(results: dict, main: str) -> Optional[dict]:
    """The abstract's "alignment can beat a larger model with lower-quality alignment": the small model after SFT
    and DPO against a 2-4x larger one pretrained on as many tokens and aligned with SFT only, on the same held-out
    preference pairs (and chat translation items)."""
    runs = results["runs"]
    dpo, rival, small = runs.get("dpo"), runs.get("rival_sft"), runs.get(main)
    if not (dpo and rival and small and "preference" in dpo and "preference" in rival):
        return None
    gap, two_se = accuracy_gap(dpo["preference"], rival["preference"], "accuracy", "pairs")
    ratio = rival["num_params"] / dpo["num_params"] if dpo.get("num_params") else float("nan")
    chat = "; ".join(f"chat translation {d} acc_norm {dpo['mc'][t]['acc_norm']:.2f} vs {rival['mc'][t]['acc_norm']:.2f}"
                     for d, t in (("into Arabic", "chat_translate"), ("into English", "chat_translate_to_en"))
                     if t in dpo["mc"] and t in rival["mc"])
    pre = runs.get("rival")
    lm = (f"; before alignment the larger model's held-out bits/byte {final_bpb(pre, 'en'):.3f} English, "
          f"{final_bpb(pre, 'ar'):.3f} Arabic vs the small model's {final_bpb(small, 'en'):.3f}, "
          f"{final_bpb(small, 'ar'):.3f} after CPT") if pre else ""
    return {"claim": "Alignment can beat a larger model with lower-quality alignment",
            "evidence": f"held-out preference pairs favoured: small model ({dpo.get('num_params', 0):,} parameters) "
                        f"SFT+DPO {dpo['preference']['accuracy']:.2f} vs a {ratio:.1f}x larger model "
                        f"({rival.get('num_params', 0):,}) with SFT only {rival['preference']['accuracy']:.2f} (gap "
                        f"{gap:+.2f}, 2 s.e. {two_se:.2f}, {dpo['preference']['pairs']} pairs)"
                        + (f"; {chat}" if chat else "") + lm,
            "verdict": verdict_accuracy(gap, two_se),
            "rule": "the small SFT+DPO model prefers the chosen answer more often than the larger SFT-only model by "
                    ">2 s.e."}


def _progressive(results: dict, main: str) -> Optional[dict]:
    """AraLLaMA's progressive vocabulary expansion against adding every piece at once, at equal steps and data."""
    runs, info = results["runs"], results.get("progressive")
    if "progressive" not in runs or not info:
        return None
    ar_prog, ar_full = (seed_values(runs, arm, final_bpb, "ar") for arm in ("progressive", main))
    en_prog, en_full = (seed_values(runs, arm, final_bpb, "en") for arm in ("progressive", main))
    entries = ", ".join(f"{s['share']:.0%} of the pieces {s['new_token_share']:.0%}" for s in info["stages"])
    return {"claim": "Progressive vocabulary expansion (AraLLaMA) beats adding every Arabic piece at once",
            "evidence": f"Arabic bits/byte after CPT {shown(ar_prog)} progressive ({len(info['stages'])} stages) vs "
                        f"{shown(ar_full)} at once; English {shown(en_prog)} vs {shown(en_full)}; share of held-out "
                        f"Arabic tokens new to the model when a vocabulary enters: {entries} (at once "
                        f"{info['all_at_once_new_token_share']:.0%})",
            "verdict": verdict_lower_seeded(ar_prog, ar_full),
            "rule": f"lower Arabic bits/byte than all at once ({lower_rule(len(ar_prog))}) after the same steps and "
                    "batches"}


# ---------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fertility(fertility: list[dict], path: Path) -> None:
    plt = _plt()
    langs = sorted({r["language"] for r in fertility})
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, tok in enumerate(("base", "merged")):
        values = [fertility_of(fertility, tok, lang) or 0.0 for lang in langs]
        bars = ax.bar([x + 0.38 * i for x in range(len(langs))], values, width=0.36, label=f"{tok} tokenizer")
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([x + 0.19 for x in range(len(langs))], langs)
    ax.set_ylabel("tokens per word (held-out)")
    ax.set_title("Fertility before and after vocabulary expansion")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bpb_curves(results: dict, arms: list[str], path: Path) -> None:
    plt = _plt()
    base = results["runs"]["base"]
    titles = {"en": "English", "ar": "Arabic", "translation": "en→ar translations"}
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, lang in zip(axes, titles):
        for arm in arms:
            pts = results["runs"][arm]["points"]
            ax.plot([p["step"] for p in pts], [p["bpb"][lang] for p in pts], marker="o", ms=3, label=arm)
        if lang == "en":
            ax.axhline(final_bpb(base, lang), color="gray", ls="--", lw=1, label="English base model")
        else:  # the unexpanded model starts an order of magnitude higher on Arabic
            ax.set_yscale("log")
        ax.set_title(f"{titles[lang]}: held-out bits per byte")
        ax.set_xlabel("continued-pretraining step")
        ax.set_ylabel("bits / byte (lower is better)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def arm_metrics(recipe: "Recipe", arm: str) -> list[dict]:
    """An arm's ``metrics.jsonl`` rows; the progressive arm's stages joined, at their CPT steps."""
    if not progressive.is_progressive(arm):
        return read_metrics(str(recipe.dir / "cpt" / arm))
    return [dict(r, step=r["step"] + start) for workdir, start in progressive.stage_workdirs(recipe, arm)
            for r in read_metrics(str(workdir))]


def plot_training_loss(recipe: "Recipe", arms: list[str], path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.4))
    rows = read_metrics(str(recipe.dir / "base"))
    axes[0].plot([r["step"] for r in rows], [r["loss"] for r in rows])
    axes[0].set_title("(a) English base model: training loss")
    for ax, key in zip(axes[1:], ("loss/en", "loss/ar", "heldout/en")):
        for arm in arms:
            rows = [r for r in arm_metrics(recipe, arm) if key in r]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=arm, marker="o" if "heldout" in key else None,
                    ms=3)
        ax.set_title(f"(c) CPT: {key} ({'bits/byte, the retention guard' if 'heldout' in key else 'per token'})",
                     fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(results: dict, runs: list[str], path: Path) -> None:
    plt = _plt()
    tasks = ["en_cloze", "ar_cloze", "translate", "chat_translate", "chat_translate_to_en"]
    fig, ax = plt.subplots(figsize=(11, 3.6))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        mc = results["runs"][run]["mc"]
        ax.bar([t + i * width for t in range(len(tasks))], [mc.get(t, {}).get("acc_norm", 0.0) for t in tasks],
               width=width, label=run)
    ax.axhline(0.25, color="gray", ls=":", lw=1, label="chance (4 choices)")
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))], tasks)
    ax.set_ylabel("acc_norm (held-out)")
    ax.set_ylim(0, 1)
    ax.set_title("Multiple-choice accuracy on held-out items")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dpo(recipe: "Recipe", results: dict, path: Path) -> None:
    plt = _plt()
    rows = [r for r in read_metrics(str(recipe.dir / "dpo")) if "rewards/margins" in r]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot([r["step"] for r in rows], [r["rewards/margins"] for r in rows], marker="o", ms=3, label="train margin")
    h = results.get("dpo_heldout", {})
    if rows and "rewards/margins" in h:
        ax.scatter([rows[-1]["step"]], [h["rewards/margins"]], color="red", zorder=3, label="held-out margin")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["rewards/accuracy"] for r in rows], color="green", ls="--",
             label="train reward accuracy")
    ax2.set_ylim(0, 1)
    ax.set_xlabel("DPO step")
    ax.set_ylabel("reward margin β·Δlog-ratio")
    ax2.set_ylabel("reward accuracy")
    ax.set_title("DPO reward margins")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- markdown


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def markdown(recipe: "Recipe", results: dict, fertility: list[dict], claim_rows: list[dict], arms: list[str]) -> str:
    summaries = {s: json.loads(recipe.marker(s).read_text()) for s in ("data", "expand") if recipe.done(s)}
    c = recipe.cfg
    runs = results["runs"]
    order = ["base", *arms, "sft", "dpo", "rival", "rival_sft"]
    parts = [
        "# The tiny ALLaM recipe: report",
        "",
        f"Model `{c.model_gin}`, batch {c.batch_size} × {c.seq_len} tokens; steps: base {c.base_steps}, "
        f"continued pretraining {c.cpt_steps} per arm, SFT {c.sft_steps}, DPO {c.dpo_steps}. Every number below is "
        "measured on held-out data the models never trained on. At this scale (a ~0.1M-parameter model, "
        "minutes of CPU) the numbers test the *direction* of each claim, not its size."
        + (f" The larger rival (`{'`, `'.join(c.rival_model_bindings)}`): {recipe.rival_steps()} pretraining steps, "
           f"SFT {c.sft_steps}, no DPO." if "rival_sft" in runs else ""),
        "",
        "## Claims",
        "",
        _table(["claim", "measured", "verdict", "rule"],
               [[r["claim"], r["evidence"], f"**{r['verdict']}**", r["rule"]] for r in claim_rows]),
        "",
        "## Vocabulary expansion",
        "",
        "![fertility](plots/fertility.png)",
        "",
        _table(["tokenizer", "language", "register", "vocab", "tokens/word", "bytes/token", "byte fallback"],
               [[r["tokenizer"], r["language"], r.get("register", "all"), f"{r['vocab_size']:,}",
                 f"{r['tokens_per_word']:.3f}",
                 f"{r['bytes_per_token']:.2f}", f"{r['byte_fallback_rate']:.1%}"] for r in fertility]),
    ]
    if "expand" in summaries:
        e = summaries["expand"]
        parts += ["", f"{e['merge']['added']:,} Arabic pieces added ({e['vocab_sizes']['base']:,} → "
                  f"{e['vocab_sizes']['merged']:,} with padding); new rows start as the mean of "
                  f"{e['expansion']['mean_subtoken']['mean_subtokens_per_new_piece']:.1f} base sub-token rows on "
                  f"average; the main arm's new rows start as `{c.expand_init}` (`fitted`: input rows that mean, "
                  "output rows fitted so each new token starts with its share of Arabic contexts and English keeps "
                  "its predictions), `mean_subtoken_init` uses the mean for both (ALLaM's initialisation), "
                  "`random_init` random rows."]
    info = results.get("progressive")
    if info:
        parts += ["", "The `progressive` arm (AraLLaMA) adds the Arabic pieces in stages, each a run of its own whose new "
                  "rows start from the stage before, its data going on where that stage stopped:", "",
                  _table(["stage", "pieces added", "vocabulary", "steps", "held-out Arabic tokens new at entry"],
                         [[str(k), f"{s['share']:.0%}", f"{s['vocab_size']:,}", str(s["steps"]),
                           f"{s['new_token_share']:.1%}"] for k, s in enumerate(info["stages"], 1)]
                         + [["all at once", "100%", f"{info['stages'][-1]['vocab_size']:,}", str(c.cpt_steps),
                             f"{info['all_at_once_new_token_share']:.1%}"]])]
    parts += [
        "", "## Training", "", "![training loss](plots/training_loss.png)", "",
        "Per-token losses are not comparable across tokenizers; held-out bits per byte are:", "",
        "![bits per byte](plots/bpb_curves.png)", "",
        _table(["run", "tokenizer", "English bits/byte", "Arabic bits/byte", "en→ar translation bits/byte"],
               [[r, runs[r]["tokenizer"], f"{final_bpb(runs[r], 'en'):.4f}", f"{final_bpb(runs[r], 'ar'):.4f}",
                 f"{final_bpb(runs[r], 'translation'):.4f}"] for r in order if r in runs]),
        "", "## Multiple choice (held-out, 4 choices)", "", "![accuracy](plots/mc_accuracy.png)", "",
        _table(["run", *MC_COLUMNS], [[r] + [f"{runs[r]['mc'][t]['acc']:.2f} / {runs[r]['mc'][t]['acc_norm']:.2f}"
                                             + (" ↑" if above_chance(runs[r]["mc"][t]) else "")
                                             if t in runs[r]["mc"] else "-" for t in MC_COLUMNS]
                                       for r in order if r in runs]),
        "", "Cells: acc / acc_norm (log-likelihood per character); ↑: acc_norm above chance (0.25) by more than two "
        "binomial standard errors of chance on that many items.", "",
        "## Alignment", "", "![dpo](plots/dpo.png)", "",
        SYNTHETIC_PAIRS, "",
    ]
    prefs = [(r, runs[r]["preference"]) for r in order if "preference" in runs.get(r, {})]
    if prefs:
        parts += [_table(["run", "prefers chosen (own log-prob)", "mean log-prob gap", "pairs"],
                         [[r, f"{p['accuracy']:.3f}", f"{p['mean_logp_gap']:+.2f}", str(p["pairs"])] for r, p in prefs]),
                  ""]
    h = results.get("dpo_heldout")
    if h:
        parts.append(f"Held-out DPO pairs ({h['pairs']}): reward accuracy {h['rewards/accuracy']:.3f}, margin "
                     f"{h['rewards/margins']:+.4f}, chosen {h['rewards/chosen']:+.4f}, rejected "
                     f"{h['rewards/rejected']:+.4f}.")
    if "data" in summaries:
        d = summaries["data"]
        parts += ["", "## Data", "", _table(["file", "train", "held out"],
                                            [[k, f"{v['train']:,}", f"{v['heldout']:,}"] for k, v in d["split"].items()]),
                  "", "Evaluation items: " + ", ".join(f"{k} {v}" for k, v in d["mc_items"].items()) + "."]
    return "\n".join(parts) + "\n"


def write_report(recipe: "Recipe") -> dict:
    results = json.loads((recipe.dir / "eval" / "results.json").read_text())
    fertility = json.loads((recipe.tok / "fertility.json").read_text())
    arms = [r for r in results["runs"] if r not in NOT_ARMS and not is_seed_run(r)]
    plots = recipe.dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_fertility(fertility, plots / "fertility.png")
    plot_bpb_curves(results, arms, plots / "bpb_curves.png")
    plot_training_loss(recipe, arms, plots / "training_loss.png")
    plot_accuracy(results, [r for r in ["base", *arms, *NOT_ARMS[1:]] if r in results["runs"]], plots / "mc_accuracy.png")
    plot_dpo(recipe, results, plots / "dpo.png")
    claim_rows = claims(results, fertility, recipe.cfg.main_arm, recipe.cfg.expand_init)
    (recipe.dir / "claims.json").write_text(json.dumps(claim_rows, indent=2, ensure_ascii=False) + "\n")
    (recipe.dir / "report.md").write_text(markdown(recipe, results, fertility, claim_rows, arms), encoding="utf-8")
    return {"report": str(recipe.dir / "report.md"), "claims": {r["claim"]: r["verdict"] for r in claim_rows},
            "plots": sorted(p.name for p in plots.glob("*.png"))}
