"""SFT data: chat JSONL → a seqio Task of pre-tokenised conversations → packed batches whose loss
weights cover assistant tokens only (see :mod:`allam_jax.align.chat`)."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Iterator, Optional, Sequence

import seqio
import tensorflow as tf

from allam_jax.align.chat import ChatError, ChatTemplate, encode_conversation
from allam_jax.data.pipeline import DataShards, SeqioBatchIterator
from allam_jax.core.paths import as_path
from allam_jax.data.sources import DataError, TrainSource, expand_patterns
from allam_jax.data.tasks import LANGUAGES
from allam_jax.data.language import arabic_fraction
from allam_jax.data.vocabularies import bos_id, get_vocabulary, stored_offset
from allam_jax.core.errors import ConfigError
from allam_jax.data.batch import DataDescription, DataSourceDefaults

log = logging.getLogger(__name__)

SFT_TASK = "sft_chat"


@dataclasses.dataclass
class SkipReport:
    """Why examples were left out; logged once per pass over the data."""

    kept: int = 0
    malformed: int = 0
    no_assistant_or_bad_roles: int = 0
    too_long: int = 0

    def skipped(self) -> int:
        return self.malformed + self.no_assistant_or_bad_roles + self.too_long


def read_jsonl(path: str, on_error: str, report: SkipReport) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` of a JSONL file; malformed lines skipped and counted, or fatal."""
    with as_path(path).open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
                if line:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not a JSON object")
                    yield line_no, obj
            except (UnicodeDecodeError, ValueError) as e:
                if on_error == "fatal":
                    raise DataError(f"{path}:{line_no}: malformed line ({str(e)[:80]})") from None
                report.malformed += 1


def conversation_language(messages: Sequence[dict]) -> str:
    answer = " ".join(m["content"] for m in messages if m.get("role") == "assistant")
    return "ar" if arabic_fraction(answer) > 0.5 else "en"


@dataclasses.dataclass(frozen=True)
class SftData(DataSourceDefaults):
    """Chat JSONL files for supervised fine-tuning (gin: ``SftData``); plugs into ``allam train`` as
    ``experiment.data``. ``epochs=None`` repeats forever; a number ends training when the data runs out."""

    paths: Sequence[str] = ("data_cache/bundled/sft_train.jsonl",)
    vocabulary: str = "byte"
    template: ChatTemplate = ChatTemplate()
    train_on_all_assistant_turns: bool = True
    on_error: str = "skip"
    epochs: Optional[int] = None
    seed: int = 0
    shuffle_buffer: int = 10_000
    data_shards: int = 0  # as SeqioData.data_shards
    languages: Sequence[str] = LANGUAGES

    def describe(self) -> DataDescription:
        return DataDescription(self.vocabulary, data_shards=self.data_shards)

    def __post_init__(self):
        if self.on_error not in ("skip", "fatal"):
            raise ConfigError(f"SftData.on_error must be 'skip' or 'fatal', got {self.on_error!r}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"SftData.epochs must be positive or None, got {self.epochs!r}")

    def examples(self, vocab, seq_len: int, shard: tuple[int, int] = (0, 1),
                 report: Optional[SkipReport] = None) -> Iterator[dict]:
        """Tokenised conversations: ``targets`` (ids after the leading BOS), ``weights``, ``lang``."""
        report = report if report is not None else SkipReport()
        bos, offset = bos_id(vocab), stored_offset(vocab)
        index = 0
        for path in expand_patterns(self.paths):
            for line_no, obj in read_jsonl(path, self.on_error, report):
                try:
                    ids, weights = encode_conversation(obj.get("messages"), vocab, self.template, bos,
                                                       self.train_on_all_assistant_turns)
                except ChatError as e:
                    report.no_assistant_or_bad_roles += 1
                    if self.on_error == "fatal":
                        raise DataError(f"{path}:{line_no}: {e}") from None
                    continue
                if len(ids) - 1 > seq_len:
                    report.too_long += 1
                    if self.on_error == "fatal":
                        raise DataError(f"{path}:{line_no}: the conversation has {len(ids)} tokens, longer than "
                                        f"seq_len={seq_len}") from None
                    continue
                index += 1
                if (index - 1) % shard[1] != shard[0]:
                    continue
                report.kept += 1
                lang = LANGUAGES.index(conversation_language(obj["messages"]))
                n = len(ids) - 1  # per-token ids stored +1, as the pipeline expects (0 is padding to the packer)
                yield {"targets": [i + offset for i in ids[1:]], "weights": [w + 1 for w in weights[1:]],
                       "lang": [lang + 1] * n, "task": [1] * n}
        if report.skipped():
            log.warning("SFT data: kept %d conversations, skipped %d (malformed %d, no assistant turn or bad roles "
                        "%d, longer than seq_len %d)", report.kept, report.skipped(), report.malformed,
                        report.no_assistant_or_bad_roles, report.too_long)

    def register(self, vocab, seq_len: int) -> None:
        spec = tf.TensorSpec([None], tf.int32)
        source = TrainSource(lambda shard: tf.data.Dataset.from_generator(
            lambda: self.examples(vocab, seq_len, shard),
            output_signature={"targets": spec, "weights": spec, "lang": spec, "task": spec}),
            expand_patterns(self.paths))  # missing files fail here, with their names
        passthrough = lambda n: seqio.Feature(seqio.PassThroughVocabulary(n), add_eos=False,  # noqa: E731
                                              dtype=tf.int32, required=False)
        if SFT_TASK in seqio.TaskRegistry.names():
            seqio.TaskRegistry.remove(SFT_TASK)
        seqio.TaskRegistry.add(
            SFT_TASK, source=source, preprocessors=[],
            output_features={"targets": seqio.Feature(vocab, add_eos=False, dtype=tf.int32),
                             "weights": passthrough(3), "lang": passthrough(len(LANGUAGES) + 1), "task": passthrough(2)},
            shuffle_buffer_size=self.shuffle_buffer)

    def make_iterator(self, seq_len: int, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> SeqioBatchIterator:
        shards = DataShards.of(self.data_shards, batch_size, process_index, process_count, "SftData")
        vocab = get_vocabulary(self.vocabulary)
        self.register(vocab, seq_len)
        return SeqioBatchIterator(SFT_TASK, vocab, seq_len, shards, self.seed, num_epochs=self.epochs)
