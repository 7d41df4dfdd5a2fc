"""Every data source keeps the one contract the trainer reads (``data/batch.py``): batches in exactly the
batch layout, and iterators that say their tokenizer, languages and stage (the seqio and cached sources are
checked beside their fixtures, in test_seqio_data.py and test_data_cache.py)."""

import json

import pytest

from helpers import check_batch_contract as _check


def test_text_files_keep_the_contract(tmp_path):
    from allam_jax.data.text_files import TextFileData

    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 30 + "مرحبا بالعالم الجميل هنا\n" * 30,
                      encoding="utf-8")
    _check(TextFileData(paths=[str(corpus)], languages=["en", "ar"]).make_iterator(32, 4), 4, 32)


def test_preference_pairs_keep_the_contract_and_their_tokenizer_is_checked(tmp_path):
    from allam_jax.align.preference_data import DpoData
    from allam_jax.core.errors import ConfigError
    from allam_jax.data.vocabularies import check_fits_model

    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q {i}", "chosen": "نعم", "rejected": "no"}) + "\n"
                             for i in range(6)))
    it = DpoData(paths=[str(pairs)]).make_iterator(32, 2)
    _check(it, 4, 32, extra=("ref_logp",))
    with pytest.raises(ConfigError, match="has 259 ids but the model has ModelConfig.vocab_size=100"):
        check_fits_model(it.vocab, 100, "tokenizer byte")


def test_a_dpo_run_whose_tokenizer_outgrows_the_model_stops_before_any_step(tmp_path, capsys):
    from allam_jax.cli.main import main

    pairs = tmp_path / "p.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"q {i}", "chosen": "yes", "rejected": "no"}) + "\n"
                             for i in range(6)))
    rc = main(["train", "--gin_file", "runs/dpo_tiny_cpu.gin", "--workdir", str(tmp_path / "run"),
               "--gin_bindings", f"DpoData.paths = ['{pairs}']", "--gin_bindings", "TrainerConfig.init_from = None",
               "--gin_bindings", "ModelConfig.vocab_size = 200"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "tokenizer byte has 259 ids but the model has ModelConfig.vocab_size=200" in err
