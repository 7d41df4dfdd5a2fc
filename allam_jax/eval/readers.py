"""Readers for the public multiple-choice benchmark files, and the prompts built from them.

Formats (``FORMAT:PATH`` on the command line; CSV or JSONL where a header names the fields):

========== ================================================================ =========== ==========
format     fields                                                           choices     language
========== ================================================================ =========== ==========
arabicmmlu ``Question, Context, Option 1..5, Answer Key (A-E), Subject,      أ ب ج د هـ  ar
           Level, Country`` (Koto et al.)
acva       ``id, question, answer`` (answer صح/خطأ, also نعم/لا)             صح / خطأ    ar
exams_ar   ``question, A, B, C, D, answer`` (A-D or أ-د)                     أ ب ج د     ar
mmlu_ar    CSV without header: question, A, B, C, D, answer (translated)    أ ب ج د     ar
mmlu       CSV without header: question, A, B, C, D, answer (Hendrycks)     A B C D     en
cloze      JSONL ``context, choices (list), gold (index)[, language,         the texts   ``language``
           subject]`` (HellaSwag/ARC style: each choice text is scored)
========== ================================================================ =========== ==========

Prompts (the answer is scored as the continuation, with a leading space, lm-evaluation-harness
style)::

    arabicmmlu  [{Context}\\n]السؤال: {Question}\\nأ. {Option 1}\\n...\\nالإجابة:         -> " أ"
    acva        السؤال: {question}\\nالإجابة:                                     -> " صح" / " خطأ"
    exams_ar    السؤال: {question}\\nأ. {A}\\nب. {B}\\nج. {C}\\nد. {D}\\nالإجابة:        -> " أ"
    mmlu_ar     the same as exams_ar
    mmlu        {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:                 -> " A"
    cloze       {context}                                                   -> each choice as written

MMLU prompts get the harness's header ``The following are multiple choice questions (with answers)
about {subject}.`` (Arabic: ``فيما يلي أسئلة اختيار من متعدد (مع الإجابات) حول {subject}.``) when the
subject is known (the file name ``{subject}_test.csv``, as in the public release).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Callable, Optional

from etils import epath

from allam_jax.core.errors import BenchmarkFileError, ConfigError
from allam_jax.core.paths import as_path

AR_LETTERS = ("أ", "ب", "ج", "د", "هـ")
EN_LETTERS = ("A", "B", "C", "D", "E")


@dataclasses.dataclass(frozen=True)
class Question:
    """One multiple-choice item: the prompt, the continuations to score, and the gold index."""

    prompt: str
    choices: tuple[str, ...]
    gold: int
    subject: str
    language: str
    source: str  # FILE:ROW

    def with_answer(self) -> str:
        """The prompt followed by the gold answer (a few-shot example)."""
        return self.prompt + self.choices[self.gold]


def _rows(path: str, header: bool) -> list[tuple[int, dict | list]]:
    file = epath.Path(path)
    if not file.exists():
        raise BenchmarkFileError(f"benchmark file not found: {path}")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BenchmarkFileError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    if path.endswith((".jsonl", ".json")):
        out = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append((i, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise BenchmarkFileError(f"{path}:{i}: malformed JSON ({e.msg})") from None
        return out
    reader = csv.DictReader(io.StringIO(text)) if header else csv.reader(io.StringIO(text))
    start = 2 if header else 1
    return [(i, row) for i, row in enumerate(reader, start) if row]


def _need(path: str, rows, fields: tuple[str, ...]) -> None:
    if rows and isinstance(rows[0][1], dict):
        have = list(rows[0][1])
        missing = [f for f in fields if f not in rows[0][1]]
        if missing:
            raise BenchmarkFileError(f"{path}: missing column(s) {missing}; the file has {have}")


def _options(letters, values) -> str:
    return "".join(f"\n{letter}. {value}" for letter, value in zip(letters, values))


def _gold(path: str, row_no: int, field: str, value: str, letters: tuple[str, ...], n: int) -> int:
    v = str(value).strip()
    for table in (EN_LETTERS, AR_LETTERS):
        if v in table[:n]:
            return table.index(v)
    raise BenchmarkFileError(f"{path}:{row_no}: field {field!r} = {v!r} is not one of the {n} choices "
                             f"{list(letters[:n])}")


def read_arabicmmlu(path: str) -> list[Question]:
    rows = _rows(path, header=True)
    _need(path, rows, ("Question", "Option 1", "Option 2", "Answer Key"))
    out = []
    for row_no, r in rows:
        options = [str(r.get(f"Option {i}") or "").strip() for i in range(1, 6)]
        options = [o for o in options if o]
        if len(options) < 2:
            raise BenchmarkFileError(f"{path}:{row_no}: fewer than two options in 'Option 1..5'")
        gold = _gold(path, row_no, "Answer Key", r["Answer Key"], AR_LETTERS, len(options))
        context = str(r.get("Context") or "").strip()
        prompt = (context + "\n" if context else "") + f"السؤال: {r['Question'].strip()}" + _options(
            AR_LETTERS, options) + "\nالإجابة:"
        out.append(Question(prompt, tuple(" " + a for a in AR_LETTERS[: len(options)]), gold,
                            str(r.get("Subject") or "all"), "ar", f"{path}:{row_no}"))
    return out


def read_acva(path: str) -> list[Question]:
    rows = _rows(path, header=True)
    _need(path, rows, ("question", "answer"))
    truth = {"صح": 0, "نعم": 0, "خطأ": 1, "لا": 1}
    out = []
    for row_no, r in rows:
        answer = str(r["answer"]).strip()
        if answer not in truth:
            raise BenchmarkFileError(f"{path}:{row_no}: field 'answer' = {answer!r} is not one of {list(truth)}")
        out.append(Question(f"السؤال: {r['question'].strip()}\nالإجابة:", (" صح", " خطأ"), truth[answer],
                            Path(path).stem, "ar", f"{path}:{row_no}"))
    return out


def _abcd(path: str, row_no: int, question: str, options, answer, letters, language: str, subject: str,
          header: str) -> Question:
    gold = _gold(path, row_no, "answer", answer, letters, 4)
    q = "السؤال: " + question.strip() if language == "ar" else question.strip()
    prompt = header + q + _options(letters, [str(o).strip() for o in options]) + (
        "\nالإجابة:" if language == "ar" else "\nAnswer:")
    return Question(prompt, tuple(" " + a for a in letters[:4]), gold, subject, language, f"{path}:{row_no}")


def read_exams_ar(path: str) -> list[Question]:
    rows = _rows(path, header=True)
    _need(path, rows, ("question", "A", "B", "C", "D", "answer"))
    return [_abcd(path, n, r["question"], [r[k] for k in "ABCD"], r["answer"], AR_LETTERS, "ar",
                  str(r.get("subject") or "all"), "") for n, r in rows]


def _mmlu(path: str, language: str) -> list[Question]:
    rows = _rows(path, header=False)
    subject = Path(path).stem.replace("_test", "").replace("_dev", "").replace("_val", "")
    header = (f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
              if language == "en" else f"فيما يلي أسئلة اختيار من متعدد (مع الإجابات) حول {subject.replace('_', ' ')}.\n\n")
    out = []
    for row_no, r in rows:
        if len(r) != 6:
            raise BenchmarkFileError(f"{path}:{row_no}: expected 6 columns (question, A, B, C, D, answer), got {len(r)}")
        out.append(_abcd(path, row_no, r[0], r[1:5], r[5], EN_LETTERS if language == "en" else AR_LETTERS, language,
                         subject, header))
    return out


def read_cloze(path: str) -> list[Question]:
    """Continuation scoring: no letters, the choice texts themselves are the continuations (what a small
    model can be measured on; the lm-evaluation-harness formats of HellaSwag, ARC, PIQA)."""
    rows = _rows(path, header=True)
    _need(path, rows, ("context", "choices", "gold"))
    out = []
    for row_no, r in rows:
        if not isinstance(r, dict) or any(f not in r for f in ("context", "choices", "gold")):
            raise BenchmarkFileError(f"{path}:{row_no}: a cloze item needs the fields 'context', 'choices', 'gold'")
        choices = r["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise BenchmarkFileError(f"{path}:{row_no}: field 'choices' must be a list of two or more non-empty texts")
        gold = r["gold"]
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise BenchmarkFileError(f"{path}:{row_no}: field 'gold' = {gold!r} is not an index into the "
                                     f"{len(choices)} choices")
        out.append(Question(str(r["context"]), tuple(choices), gold, str(r.get("subject") or Path(path).stem),
                            str(r.get("language") or "en"), f"{path}:{row_no}"))
    return out


READERS: dict[str, Callable[[str], list[Question]]] = {
    "arabicmmlu": read_arabicmmlu,
    "acva": read_acva,
    "exams_ar": read_exams_ar,
    "mmlu_ar": lambda p: _mmlu(p, "ar"),
    "mmlu": lambda p: _mmlu(p, "en"),
    "cloze": read_cloze,
}


def parse_task_spec(spec: str) -> tuple[str, str, str]:
    """``FORMAT:PATH[:DEV_PATH]`` -> (format, path, dev path or ''), checked without reading the files, so a
    command can refuse a bad spec before it loads a model."""
    fmt, _, rest = spec.partition(":")
    if fmt not in READERS or not rest:
        raise ConfigError(f"bad task {spec!r}: use FORMAT:PATH[:DEV_PATH] with FORMAT one of {sorted(READERS)}")
    path, _, dev = rest.partition(":") if not rest.startswith("gs://") else (rest, "", "")
    for p in filter(None, (path, dev)):
        if not as_path(p).exists():
            raise FileNotFoundError(f"benchmark file not found: {p} (from --task {spec})")
    return fmt, path, dev


def read_task(spec: str) -> tuple[str, list[Question], Optional[list[Question]]]:
    """``FORMAT:PATH[:DEV_PATH]`` -> (format, test questions, dev questions for few-shot or None)."""
    fmt, path, dev = parse_task_spec(spec)
    test = READERS[fmt](path)
    if not test:
        raise BenchmarkFileError(f"{path}: no questions")
    return fmt, test, (READERS[fmt](dev) if dev else None)
