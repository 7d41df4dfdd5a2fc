"""Issue 44: the files a run keeps in its workdir are read through one validated loader
(``checkpoint/workdir_files.py``): damaged, outdated or foreign contents are one line naming the file and the field
(exit 2), goodput.json a warning and a fresh count, an edited data position refused."""

import json
import os
import shutil

import numpy as np
import pytest
from etils import epath

from allam_jax.cli.main import main
from allam_jax.core.errors import WorkdirFileError
from allam_jax.checkpoint import workdir_files
from allam_jax.train.goodput import PARTS
from allam_jax.checkpoint.workdir_lock import LOCK_NAME, workdir_lock


def _write(tmp_path, name, text) -> epath.Path:
    (tmp_path / name).write_text(text) if isinstance(text, str) else (tmp_path / name).write_bytes(text)
    return epath.Path(tmp_path)


GOOD_RECORD = {"batch_size": 4, "seq_len": 64, "process_count": 1, "data_shards": None, "rates": None}


@pytest.mark.parametrize("text,words", [
    ("[1, 2]", "a JSON object was expected, got list"),
    ("{", "not JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (json.dumps({**GOOD_RECORD, "seq_len": "64"}), "field 'seq_len' must be a positive integer"),
    (json.dumps({k: v for k, v in GOOD_RECORD.items() if k != "batch_size"}), "field 'batch_size' is missing"),
    (json.dumps({**GOOD_RECORD, "rates": {"ar": "x"}}), "field 'rates'"),
])
def test_a_damaged_run_record_names_file_and_field(tmp_path, text, words):
    work = _write(tmp_path, "run.json", text)
    with pytest.raises(WorkdirFileError, match="run.json") as e:
        workdir_files.read_run_record(work)
    assert words in str(e.value) and len(str(e.value).splitlines()) == 1


def test_a_good_run_record_reads_back(tmp_path):
    assert workdir_files.read_run_record(_write(tmp_path, "run.json", json.dumps(GOOD_RECORD))) == GOOD_RECORD
    assert workdir_files.read_run_record(epath.Path(tmp_path / "none")) is None


@pytest.mark.parametrize("text,words", [
    ("garbage", "not JSON"), ("{}", "field 'step' is missing"),
    ('{"step": 0, "bits_per_byte": {"en": -1}}', "field 'bits_per_byte'"),
    ('{"step": 0, "bits_per_byte": {"en": NaN}}', "field 'bits_per_byte'"),
])
def test_a_damaged_heldout_start_names_file_and_field(tmp_path, text, words):
    with pytest.raises(WorkdirFileError, match="heldout_start.json") as e:
        workdir_files.read_heldout_start(_write(tmp_path, "heldout_start.json", text))
    assert words in str(e.value)


@pytest.mark.parametrize("text", ["[]", '{"saved": {"x": 1}}', "{", '{"first_start": "yesterday"}'])
def test_damaged_goodput_is_a_warning_and_a_fresh_count(tmp_path, text, caplog):
    with caplog.at_level("WARNING"):
        assert workdir_files.read_goodput(_write(tmp_path, "goodput.json", text), PARTS) == {}
    assert "goodput.json" in caplog.text and "afresh" in caplog.text


def test_a_lock_with_a_bad_pid_is_named_and_a_half_written_one_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"host": "h", "pid": "abc"}')
    with pytest.raises(WorkdirFileError, match="field 'pid' must be a positive integer"):
        with workdir_lock(str(tmp_path)):
            pass
    (tmp_path / LOCK_NAME).write_text("")
    os.utime(tmp_path / LOCK_NAME, (0, 0))  # written long ago, then the writer died
    with workdir_lock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_data_position_is_sealed_and_an_edit_refused():
    sealed = workdir_files.seal_data_position({"batches": 5, "seed": 0}, 5)
    assert workdir_files.open_data_position(sealed, 5, "ckpt/5") == {"batches": 5, "seed": 0}
    assert workdir_files.open_data_position(sealed, np.int64(5), "ckpt/5") == {"batches": 5, "seed": 0}
    assert workdir_files.open_data_position({"batches": 3}, 5, "ckpt/5") == {"batches": 3}  # before the seal
    with pytest.raises(WorkdirFileError, match="field 'batches' is 7 but step 5 took 5 batches"):
        workdir_files.open_data_position({**sealed, "batches": 7}, 5, "ckpt/5")
    with pytest.raises(WorkdirFileError, match="checksum does not match"):
        workdir_files.open_data_position({**sealed, "seed": 1}, 5, "ckpt/5")
    with pytest.raises(WorkdirFileError, match="belongs to step 5, not 6"):
        workdir_files.open_data_position(sealed, 6, "ckpt/6")
    with pytest.raises(WorkdirFileError, match="field 'batches' must be a non-negative integer"):
        workdir_files.open_data_position({"batches": "x"}, 5, "ckpt/5")
    with pytest.raises(WorkdirFileError, match="got list"):
        workdir_files.open_data_position([1], 5, "ckpt/5")


def _run(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


@pytest.mark.slow
def test_a_resume_reads_every_workdir_file_through_the_loader(tmp_path, capsys, caplog):
    """Two steps trained with a held-out watch on Arabic; then each damage on a copy of that workdir: run.json and
    an edited data position refused naming them; goodput.json = [] and a guard on a language added at the resume
    (heldout_start.json without it) resume, the new language measured at the resumed step."""
    from helpers import corpus_files, write_gin

    files = corpus_files(tmp_path / "corpus", en_docs=40, ar_docs=40)
    gin = write_gin(tmp_path / "run.gin", files, **{
        "TrainerConfig.num_steps": 2, "TrainerConfig.checkpoint_every": 2, "HeldoutWatch.every": 2,
        "HeldoutWatch.paths": json.dumps({"ar": files[1]})})
    base = tmp_path / "work"
    assert _run(capsys, "train", "--gin_file", str(gin), "--workdir", str(base))[0] == 0
    position = next(p for p in (base / "checkpoints" / "2" / "data").rglob("*") if p.is_file()
                    and "_checksum" in p.read_text(errors="replace"))

    def damaged(name, edit):
        work = tmp_path / name
        shutil.copytree(base, work)
        edit(work)
        return _run(capsys, "train", "--gin_file", str(gin), "--workdir", str(work),
                    "--gin_bindings", "TrainerConfig.num_steps = 3", "--gin_bindings",
                    f"HeldoutWatch.paths = {json.dumps({'ar': files[1], 'en': files[0]})}",
                    "--gin_bindings", "HeldoutWatch.max_rise = 0.5", "--gin_bindings", "HeldoutWatch.guard = 'en'")

    rc, err = damaged("record", lambda w: (w / "run.json").write_text("[1, 2]"))
    assert rc == 2 and "run.json is damaged: a JSON object was expected" in err, err

    def edit_position(w):
        p = w / position.relative_to(base)
        obj = json.loads(p.read_text())
        obj["row"] += 4
        p.write_text(json.dumps(obj))
    rc, err = damaged("position", edit_position)
    assert rc == 2 and "data position in" in err and "checksum does not match" in err, err

    with caplog.at_level("WARNING"):
        rc, err = damaged("goodput_and_guard", lambda w: (w / "goodput.json").write_text("[]"))
    assert rc == 0, err
    assert "goodput counts afresh" in caplog.text and "no starting value for en" in caplog.text
    start = json.loads((tmp_path / "goodput_and_guard" / "heldout_start.json").read_text())
    assert set(start["bits_per_byte"]) == {"ar", "en"}
