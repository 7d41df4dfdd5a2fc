"""seqio Tasks and Mixtures of the ALLaM pretraining recipe.

Tasks (each example carries ``lang`` and ``task`` ids, per token, for the per-language loss):

- ``ar_pretrain``: natural Arabic documents.
- ``en_pretrain``: English documents (the replay data that prevents forgetting).
- ``translated_pretrain``: English text machine-translated into Arabic (``translated`` files), plus
  parallel pairs rendered as Arabic documents, interleaved bilingual documents and translation prompts
  in both directions (:class:`~allam_jax.data.sources.ParallelRendering`).
- ``ar_classical_pretrain``: classical Arabic (``CorpusPaths.ar_classical``; unset by default), a task of its
  own so that a mixture weighs it apart from modern Arabic (it counts towards ``loss/ar``).

Tasks are registered from a :class:`CorpusPaths` (paths set in gin) by :func:`register_tasks`, so a
user points them at their own files; mixtures are registered by :func:`register_mixture` with rates
given either per example (seqio's meaning) or as token shares (what a recipe means by "40% English").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping, Optional, Sequence

import seqio
import tensorflow as tf

from allam_jax.data.sources import CleaningConfig, DocumentSource, ParallelRendering, TrainSource, tf_data_errors
from allam_jax.core.errors import ConfigError
from allam_jax.data.vocabularies import stored_offset

LANGUAGES = ("en", "ar", "translated")


@dataclasses.dataclass(frozen=True)
class CorpusPaths:
    """Where each task reads (gin: ``CorpusPaths``). Globs, ``gs://`` paths and ``tfds:`` specs work. A task
    added to ``TASKS`` that reads files of its own names them in ``more`` (``{'code': ['code/*.txt']}``)."""

    ar: Sequence[str] = ("data_cache/bundled/ar.txt",)
    en: Sequence[str] = ("data_cache/bundled/en.txt",)
    parallel: Sequence[str] = ("data_cache/bundled/parallel.jsonl",)
    translated: Sequence[str] = ()
    ar_classical: Sequence[str] = ()
    text_field: str = "text"
    more: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)

    def files(self, name: str) -> Sequence[str]:
        """The patterns of the file group ``name``: a field above, else an entry of ``more`` (none: empty)."""
        if name in {f.name for f in dataclasses.fields(self)} - {"text_field", "more"}:
            return getattr(self, name)
        return tuple(self.more.get(name, ()))


@dataclasses.dataclass(frozen=True)
class InputGroup:
    """One kind of file a task reads: the ``CorpusPaths`` group, the script its text must be in (None: any),
    and whether its lines are parallel pairs (rendered by ``ParallelRendering``)."""

    files: str
    script: Optional[str] = None
    parallel: bool = False


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    lang: str  # one of LANGUAGES: the per-language loss it counts towards
    inputs: tuple[InputGroup, ...] = ()


# the pretraining tasks: a new one is a line here (its files in gin: CorpusPaths, rates: SeqioData.rates);
# the same table drives `allam data cache` and CachedData's task and language ids
TASKS = (
    TaskSpec("en_pretrain", "en", (InputGroup("en", "en"),)),
    TaskSpec("ar_pretrain", "ar", (InputGroup("ar", "ar"),)),
    TaskSpec("translated_pretrain", "translated", (InputGroup("translated", "ar"), InputGroup("parallel", None, True))),
    TaskSpec("ar_classical_pretrain", "ar", (InputGroup("ar_classical", "ar"),)),
)


def _chain(sources: Sequence[DocumentSource]) -> TrainSource:
    def make(shard):
        info = seqio.ShardInfo(*shard)
        ds = sources[0].get_dataset("train", shard_info=info)
        for s in sources[1:]:
            ds = ds.concatenate(s.get_dataset("train", shard_info=info))
        return ds

    return TrainSource(make, [f for s in sources for f in s.files])


@seqio.map_over_dataset
def _annotate(ex, lang_id: int, task_id: int, eos_id: int, offset: int = 0):
    """Appends EOS and adds per-token ids, stored +1: seqio's packer treats 0 as padding and cuts it away (the
    token ids too, by ``offset``, where 0 is a token: ``vocabularies.stored_offset``)."""
    targets = tf.concat([ex["targets"], [eos_id]], axis=0) + offset
    return {"targets": targets, "lang": tf.fill(tf.shape(targets), lang_id + 1),
            "task": tf.fill(tf.shape(targets), task_id + 1)}


def split_to_length(ds: tf.data.Dataset, max_len: int) -> tf.data.Dataset:
    """Cuts each example's token features into pieces of at most ``max_len`` (nothing is dropped)."""

    def pieces(ex):
        n = tf.size(ex["targets"])
        starts = tf.range(0, n, max_len)
        ends = tf.minimum(starts + max_len, n)
        return tf.data.Dataset.from_tensor_slices((starts, ends)).map(
            lambda a, b: {k: v[a:b] for k, v in ex.items()})

    return ds.flat_map(pieces)


def source_groups(paths: CorpusPaths, spec: TaskSpec) -> list[tuple[Sequence[str], Optional[str], bool]]:
    """``(patterns, script filter, is parallel)`` of each kind of file a task reads (groups without patterns
    left out), from the task's ``inputs``."""
    groups = [(paths.files(g.files), g.script, g.parallel) for g in spec.inputs]
    return [g for g in groups if g[0]]


def register_tasks(paths: CorpusPaths, vocabulary: seqio.Vocabulary, cleaning: CleaningConfig,
                   rendering: ParallelRendering, max_len: int, shuffle_buffer: int = 10_000) -> list[str]:
    """(Re-)registers the pretraining tasks of ``TASKS``; tasks whose files are all unset are left out."""
    features = {
        "targets": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
        "lang": seqio.Feature(seqio.PassThroughVocabulary(len(LANGUAGES) + 1), add_eos=False, dtype=tf.int32,
                              required=False),
        "task": seqio.Feature(seqio.PassThroughVocabulary(len(TASKS) + 1), add_eos=False, dtype=tf.int32,
                              required=False),
    }
    registered = []
    for task_id, spec in enumerate(TASKS):
        sources = [DocumentSource(patterns, script, cleaning, parallel=rendering if parallel else None,
                                  field=paths.text_field)
                   for patterns, script, parallel in source_groups(paths, spec)]
        if not sources:
            continue
        source = sources[0] if len(sources) == 1 else _chain(sources)
        if spec.name in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(spec.name)
        seqio.TaskRegistry.add(
            spec.name,
            source=source,
            preprocessors=[
                functools.partial(seqio.preprocessors.rekey, key_map={"targets": "text"}),
                seqio.preprocessors.tokenize,
                functools.partial(_annotate, lang_id=LANGUAGES.index(spec.lang), task_id=task_id,
                                  eos_id=int(vocabulary.eos_id), offset=stored_offset(vocabulary)),
                functools.partial(split_to_length, max_len=max_len),
            ],
            output_features=features,
            shuffle_buffer_size=shuffle_buffer,
        )
        registered.append(spec.name)
    return registered


def mean_tokens_per_example(task_name: str, max_examples: int = 5_000, seed: int = 0) -> float:
    """Mean tokens of the task's (split) examples: exact for tasks up to ``max_examples`` examples, else
    estimated from that many examples of the shuffled stream (files are often sorted by source or
    length, so a prefix in file order would be biased)."""
    return task_token_stats(task_name, max_examples, seed)[0]


def task_token_stats(task_name: str, max_examples: int = 5_000, seed: int = 0) -> tuple[float, Optional[int]]:
    """(mean tokens per example, the task's total tokens when it has at most ``max_examples`` examples, else
    None): one pass that also tells a tiny task (one that a mixture would repeat every few steps)."""
    ds = seqio.get_mixture_or_task(task_name).get_dataset(None, "train", shuffle=True, seed=seed, num_epochs=1)
    total = count = 0
    with tf_data_errors():
        for ex in ds.take(max_examples + 1).as_numpy_iterator():
            if count == max_examples:  # more than max_examples: the total is not known
                return total / count, None
            total += len(ex["targets"])
            count += 1
    if count == 0:
        raise ConfigError(f"task {task_name} produced no examples: every document was filtered out or the files "
                          "are empty")
    return total / count, total


def rates_from_token_counts(token_counts: Mapping[str, float], temperature: float = 1.0) -> dict[str, float]:
    """Token shares proportional to ``count ** (1 / temperature)`` (temperature > 1 up-samples small
    tasks, as in multilingual recipes); pass the result as token-share rates."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    weights = {k: max(v, 0.0) ** (1.0 / temperature) for k, v in token_counts.items()}
    total = sum(weights.values())
    if total <= 0:
        raise ConfigError(f"token counts must not all be zero: {dict(token_counts)}")
    return {k: w / total for k, w in weights.items()}


def example_rates_for_token_shares(shares: Mapping[str, float], mean_tokens: Mapping[str, float]) -> dict[str, float]:
    """seqio samples *examples*; a task with mean length m_i at rate r_i gets token share ∝ r_i m_i, so
    r_i = share_i / m_i gives the asked-for token shares."""
    return {k: shares[k] / mean_tokens[k] for k in shares}


def token_shares(rates: Mapping[str, float], owner: str) -> dict[str, float]:
    """Rates normalised to shares summing to 1, zero rates left out; anything but non-negative finite numbers,
    or all zeros, is a ConfigError naming ``owner``."""
    bad = {k: v for k, v in rates.items() if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v))}
    if bad or not any(rates.values()):
        raise ConfigError(f"{owner}: rates must be non-negative numbers, not all zero; got {dict(rates)}")
    total = float(sum(rates.values()))
    return {k: float(v) / total for k, v in rates.items() if v > 0}


def register_mixture(name: str, rates: Mapping[str, float], rate_unit: str = "tokens",
                     mean_tokens: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """(Re-)registers mixture ``name``; returns the token shares it is expected to realise (empty for
    example rates without ``mean_tokens``: nothing is measured then)."""
    unknown = [t for t in rates if t not in seqio.TaskRegistry.names()]
    if unknown:
        raise ConfigError(f"mixture {name}: unknown task(s) {unknown}; registered: {sorted(seqio.TaskRegistry.names())}")
    if rate_unit not in ("tokens", "examples"):
        raise ConfigError(f"rate_unit must be 'tokens' or 'examples', got {rate_unit!r}")
    normalised = token_shares(rates, f"mixture {name}")
    rates = {k: float(v) for k, v in rates.items() if v > 0}
    if rate_unit == "tokens" or mean_tokens is not None:
        mean_tokens = dict(mean_tokens or {t: mean_tokens_per_example(t) for t in rates})
    if rate_unit == "tokens":
        shares = normalised
        example_rates = example_rates_for_token_shares(shares, mean_tokens)
    elif mean_tokens is None:
        example_rates, shares = rates, {}
    else:
        example_rates = rates
        weighted = {k: v * mean_tokens[k] for k, v in rates.items()}
        shares = {k: w / sum(weighted.values()) for k, w in weighted.items()}
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(example_rates.items()))
    return shares
