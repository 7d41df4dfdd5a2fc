import dataclasses
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sentencepiece as spm

from helpers import corpus_files, experiment
from allam_jax.model import Decoder, ModelConfig
from allam_jax.tokenizer.expand import expand_checkpoint
from allam_jax.tokenizer.fit_head import HeadFit
from allam_jax.tokenizer.fertility import fertility_table
from allam_jax.tokenizer.interface import load_tokenizer
from allam_jax.tokenizer.merge import merge_tokenizers
from allam_jax.data.normalize import has_arabic
from allam_jax.tokenizer.spm_io import TokenizerError, load_proto
from allam_jax.tokenizer.train import train_tokenizer
from allam_jax.train.loop import train


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    files = corpus_files(d / "corpus", en_docs=1500, ar_docs=3000)
    assert len(files) == 2, "this machine has no Arabic gettext catalogs to build ar.txt from"
    en_txt, ar_txt = files
    train_tokenizer([en_txt], 1000, str(d / "base.model"))
    train_tokenizer([ar_txt], 1500, str(d / "ar.model"))
    report = merge_tokenizers(str(d / "base.model"), str(d / "ar.model"), str(d / "merged.model"))
    return {"dir": d, "en": en_txt, "ar": ar_txt, "base": str(d / "base.model"), "add": str(d / "ar.model"),
            "merged": str(d / "merged.model"), "report": report}


def _sp(path):
    return spm.SentencePieceProcessor(model_file=path)


def test_base_is_llama_style(toks):
    sp = _sp(toks["base"])
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id()) == (0, 1, 2)
    assert sp.id_to_piece(1) == "<s>" and sp.id_to_piece(2) == "</s>"
    assert sum(sp.is_byte(i) for i in range(sp.get_piece_size())) == 256
    digits = [p.lstrip("\u2581") for p in sp.encode("2024", out_type=str) if p != "\u2581"]
    assert len(digits) == 4, digits  # digits split: one piece (or byte-fallback piece) per digit


def test_merge_keeps_every_base_piece_and_pads(toks):
    base, merged = load_proto(toks["base"]), load_proto(toks["merged"])
    for b, m in zip(base.pieces, merged.pieces):
        assert (b.piece, b.score, b.type) == (m.piece, m.score, m.type)
    assert len(merged.pieces) % 128 == 0
    assert toks["report"].added > 500
    new = merged.pieces[len(base.pieces): len(base.pieces) + toks["report"].added]
    assert len({p.piece for p in merged.pieces}) == len(merged.pieces)
    assert all(has_arabic(p.piece) for p in new), [p.piece for p in new if not has_arabic(p.piece)][:5]


def test_stage_merges_of_a_progressive_expansion_are_prefixes_of_the_full_merge(toks, tmp_path):
    """``max_new`` (one stage of a progressive expansion, unpadded): every stage's pieces keep their ids in the
    next stage and in the full merge, each stage extends the one before, and a stage's Arabic uses its pieces only."""
    stages = []
    for n in (100, 300):
        out = str(tmp_path / f"stage{n}.model")
        assert merge_tokenizers(toks["base"], toks["add"], out, pad_to_multiple=1, max_new=n).added == n
        stages.append(out)
    chain = [toks["base"], *stages, toks["merged"]]
    for smaller, larger in zip(chain, chain[1:]):
        load_tokenizer(larger).check_extends(load_tokenizer(smaller))
    first, full = load_proto(stages[0]), load_proto(toks["merged"])
    assert [p.piece for p in first.pieces] == [p.piece for p in full.pieces[: len(first.pieces)]]
    text = Path(toks["ar"]).read_text(encoding="utf-8")[:20000]
    ids = _sp(stages[0]).encode(text)
    assert max(ids) < len(first.pieces) and sum(i >= 1000 for i in ids) > len(ids) / 4  # the new pieces are used
    assert len(ids) > len(_sp(stages[1]).encode(text)) > len(_sp(toks["merged"]).encode(text))


def test_english_encodes_to_identical_ids(toks):
    base, merged = _sp(toks["base"]), _sp(toks["merged"])
    lines = Path(toks["en"]).read_text(encoding="utf-8").splitlines()
    assert len(lines) > 1000
    assert base.encode(lines) == merged.encode(lines)


@pytest.mark.slow
def test_arabic_fertility_falls_at_least_2_5x_and_english_unchanged(toks):
    table = fertility_table([toks["base"], toks["merged"]], [toks["en"], toks["ar"]])
    rows = {(Path(r["model"]).name, r["language"]): r for r in table if r["register"] == "all"}
    ar_before = rows[("base.model", "ar")]["tokens_per_word"]
    ar_after = rows[("merged.model", "ar")]["tokens_per_word"]
    assert ar_before / ar_after >= 2.5, (ar_before, ar_after)
    assert rows[("base.model", "en")]["tokens_per_word"] == rows[("merged.model", "en")]["tokens_per_word"]
    # Independent count for one language: tokens / whitespace words, straight from sentencepiece.
    sp = _sp(toks["merged"])
    raw = Path(toks["ar"]).read_text(encoding="utf-8").splitlines()
    lines = [unicodedata.normalize("NFC", x).replace("\u0640", "") for x in raw]  # fertility's normalisation
    want = sum(len(x) for x in sp.encode(lines)) / sum(len(x.split()) for x in lines)
    assert ar_after == pytest.approx(want)


@pytest.mark.parametrize("text", [
    "والمدرسة الجديدة في المدينة", "The quick brown fox", "مرحبا hello عالم world",
    "اَلْعَرَبِيَّةُ لُغَةٌ جَمِيلَةٌ", "سنة 2024 و ١٤٤٥ هـ", "emoji 🙂 و 🌙", "\u200fنص\u200e RTL marks",
])
def test_round_trip(toks, text):
    """Lossless up to the model's own normalisation (the training text's): a kashida is dropped, nothing else."""
    from allam_jax.data.normalize import normalize_text

    sp = _sp(toks["merged"])
    assert sp.decode(sp.encode(text)) == normalize_text(text)


def test_merged_model_loads_as_seqio_vocabulary(toks):
    import seqio

    vocab = seqio.SentencePieceVocabulary(toks["merged"])
    text = "والمدرسة and the school"
    assert vocab.vocab_size == len(load_proto(toks["merged"]).pieces)
    assert list(vocab.encode(text)) == _sp(toks["merged"]).encode(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_bad_tokenizer_inputs(toks, tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x00\xffnot a protobuf at all\xff" * 10)
    with pytest.raises(TokenizerError, match="junk.model is not a SentencePiece model"):
        merge_tokenizers(str(junk), toks["add"], str(tmp_path / "m.model"))
    with pytest.raises(TokenizerError, match="tokenizer not found: .*missing.model"):
        merge_tokenizers(str(tmp_path / "missing.model"), toks["add"], str(tmp_path / "m.model"))
    assert not (tmp_path / "m.model").exists()


def _save_base_checkpoint(path: Path, vocab: int, tie: bool = False) -> tuple[ModelConfig, dict]:
    cfg = ModelConfig(vocab_size=vocab, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
                      max_seq_len=64, tie_embeddings=tie, compute_dtype="float32")
    params = Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    ck = ocp.StandardCheckpointer()
    ck.save(path / "7" / "state", {"params": params, "step": jnp.int32(7)})
    ck.wait_until_finished()
    return cfg, jax.device_get(params)


def _independent_means(base_model: str, merged_model: str, table: np.ndarray) -> np.ndarray:
    """Float64 means of base rows over sentencepiece's own split of each new piece's text."""
    proto = load_proto(base_model)
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    merged = _sp(merged_model)
    n_base = proto.pieces.__len__()
    rows = []
    for i in range(n_base, merged.get_piece_size()):
        if merged.is_unused(i):
            rows.append(table.astype(np.float64).mean(0))
            continue
        pieces = sp.encode_as_pieces(merged.id_to_piece(i).replace("▁", " "))
        ids = [sp.piece_to_id(p) for p in pieces]
        rows.append(table[ids].astype(np.float64).mean(0))
    return np.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("tie", [False, True])
def test_expand_checkpoint_rows_and_english_logits(toks, tmp_path, tie):
    n_base, n_merged = len(load_proto(toks["base"]).pieces), len(load_proto(toks["merged"]).pieces)
    cfg, params = _save_base_checkpoint(tmp_path / "base", n_base, tie)
    report = expand_checkpoint(str(tmp_path / "base"), toks["base"], toks["merged"], str(tmp_path / "out"))
    assert report["merged_vocab"] == n_merged and json.loads((tmp_path / "out/expansion.json").read_text())
    new = ocp.StandardCheckpointer().restore(tmp_path / "out/0/state")["params"]
    emb, new_emb = params["embed"]["embedding"], np.asarray(new["embed"]["embedding"])
    assert new_emb.shape == (n_merged, 32)
    np.testing.assert_array_equal(new_emb[:n_base], emb)
    np.testing.assert_allclose(new_emb[n_base:], _independent_means(toks["base"], toks["merged"], emb),
                               rtol=1e-6, atol=1e-7)
    if not tie:
        head, new_head = params["lm_head"]["kernel"], np.asarray(new["lm_head"]["kernel"])
        np.testing.assert_array_equal(new_head[:, :n_base], head)
        np.testing.assert_allclose(new_head[:, n_base:].T,
                                   _independent_means(toks["base"], toks["merged"], head.T), rtol=1e-6, atol=1e-7)
    text = Path(toks["en"]).read_text(encoding="utf-8").splitlines()[5]
    ids = jnp.asarray([_sp(toks["base"]).encode(text)[:40]])
    before = Decoder(cfg).apply({"params": params}, ids)
    after = Decoder(cfg.replace(vocab_size=n_merged)).apply({"params": new}, ids)
    np.testing.assert_allclose(np.asarray(after[..., :n_base]), np.asarray(before), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_expand_init_modes_and_bad_inputs(toks, tmp_path):
    n_base = len(load_proto(toks["base"]).pieces)
    _, params = _save_base_checkpoint(tmp_path / "base", n_base)
    expand_checkpoint(str(tmp_path / "base"), toks["base"], toks["merged"], str(tmp_path / "all"), "mean_all")
    rows = np.asarray(ocp.StandardCheckpointer().restore(tmp_path / "all/0/state")["params"]["embed"]["embedding"])
    np.testing.assert_allclose(rows[n_base:], np.broadcast_to(params["embed"]["embedding"].mean(0), rows[n_base:].shape),
                               rtol=1e-5, atol=1e-7)
    expand_checkpoint(str(tmp_path / "base"), toks["base"], toks["merged"], str(tmp_path / "rnd"), "random")
    rnd = np.asarray(ocp.StandardCheckpointer().restore(tmp_path / "rnd/0/state")["params"]["embed"]["embedding"])
    assert not np.allclose(rnd[n_base:], rows[n_base:]) and np.isfinite(rnd).all()
    # merged that does not extend base; checkpoint trained with another vocabulary: errors, nothing written.
    with pytest.raises(TokenizerError, match="does not begin with"):
        expand_checkpoint(str(tmp_path / "base"), toks["add"], toks["merged"], str(tmp_path / "x1"))
    _save_base_checkpoint(tmp_path / "small", 300)
    with pytest.raises(TokenizerError, match="300 rows but the base tokenizer has"):
        expand_checkpoint(str(tmp_path / "small"), toks["base"], toks["merged"], str(tmp_path / "x2"))
    # a checkpoint with more rows than the base tokenizer has pieces: refused, naming the rows; allowed when asked
    _save_base_checkpoint(tmp_path / "big", n_base + 24)
    with pytest.raises(TokenizerError, match=f"rows {n_base}-{n_base + 23} would be dropped"):
        expand_checkpoint(str(tmp_path / "big"), toks["base"], toks["merged"], str(tmp_path / "x3"))
    assert not any(p.name.startswith("x") for p in tmp_path.iterdir())
    report = expand_checkpoint(str(tmp_path / "big"), toks["base"], toks["merged"], str(tmp_path / "padded"),
                               drop_extra_rows=True)
    assert report["dropped_rows"] == [n_base, n_base + 24]


@pytest.mark.slow
def test_expanded_checkpoint_continues_training(toks, tmp_path):
    n_base, n_merged = len(load_proto(toks["base"]).pieces), len(load_proto(toks["merged"]).pieces)
    _save_base_checkpoint(tmp_path / "base", n_base)
    expand_checkpoint(str(tmp_path / "base"), toks["base"], toks["merged"], str(tmp_path / "exp"))
    exp = experiment([toks["en"]], num_steps=3, model={"vocab_size": n_merged, "d_model": 32, "mlp_dim": 64},
                     init_from=str(tmp_path / "exp"))
    final = train(exp, str(tmp_path / "run"))
    assert np.isfinite(final["loss"])


@pytest.mark.slow
def test_expand_on_eight_sharded_devices_matches_one(toks, tmp_path):
    n_base = len(load_proto(toks["base"]).pieces)
    _save_base_checkpoint(tmp_path / "base", n_base)
    expand_checkpoint(str(tmp_path / "base"), toks["base"], toks["merged"], str(tmp_path / "one"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-m", "allam_jax", "expand-checkpoint", "--ckpt", str(tmp_path / "base"),
                        "--base_tokenizer", toks["base"], "--merged_tokenizer", toks["merged"],
                        "--out", str(tmp_path / "eight")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    one = ocp.StandardCheckpointer().restore(tmp_path / "one/0/state")["params"]
    # Written on 8 devices: restore onto this process's one device through an explicit target.
    meta = ocp.StandardCheckpointer().metadata(tmp_path / "eight/0/state").item_metadata.tree
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    eight = ocp.StandardCheckpointer().restore(tmp_path / "eight/0/state", target)["params"]
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_train_reads_globs_streaming_and_samples(tmp_path, monkeypatch):
    """``--input`` takes globs; documents stream into SentencePiece (no temporary copy of the corpus is
    written) and at most ``max_sentences`` of them, a random sample, train it; the result says how many."""
    import tempfile

    from helpers import bundled_dir

    lines = (bundled_dir() / "en.txt").read_text(encoding="utf-8").splitlines()[:900]
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text("\n".join(lines[i * 300:(i + 1) * 300]) + "\n", encoding="utf-8")

    def no_temp(*args, **kwargs):
        raise AssertionError("the corpus was copied to a temporary file")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp)
    monkeypatch.setattr(tempfile, "mkstemp", no_temp)
    info = train_tokenizer([str(tmp_path / "part*.txt")], 400, str(tmp_path / "t.model"), max_sentences=500)
    assert info["files"] == 3 and info["documents"] == 900 and info["sampled"] == 500
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "t.model"))
    assert sp.get_piece_size() == 400 and sp.decode(sp.encode(lines[0])) == lines[0]
    with pytest.raises(TokenizerError, match="no input file matches .*nothing"):
        train_tokenizer([str(tmp_path / "nothing*.txt")], 400, str(tmp_path / "u.model"))


def test_fitted_output_rows_solve_the_stated_least_squares_and_give_the_stated_probabilities():
    """Synthetic contexts of two kinds: the rows equal an independent float64 solve of the ridge problem, and the
    new tokens start with the share ``q`` of the new-language contexts, each in proportion to its frequency,
    while elsewhere their logits sit OLD_OFFSET below the mean logit."""
    from allam_jax.tokenizer.fit_head import OLD_OFFSET, RIDGE, fit_output_rows

    rng = np.random.default_rng(0)
    d, n_base, n_new = 16, 40, 12
    centre = rng.normal(size=d) * 2
    hidden = np.concatenate([centre + 0.1 * rng.normal(size=(300, d)), -centre + 0.1 * rng.normal(size=(500, d))])
    hidden[:, 0] = 3.0  # a direction every context shares, as trained models' final hidden states have
    is_new = np.arange(800) < 300
    head = rng.normal(size=(n_base, d)) * 0.3
    counts = rng.integers(0, 50, size=n_new)
    q = 0.7
    rows = fit_output_rows(head, hidden, is_new, counts, q)

    logits = hidden @ head.T
    lse = np.logaddexp.reduce(logits, axis=1)
    w_mean = head.mean(0)
    target = np.where(is_new, lse - hidden @ w_mean + np.log(q / (1 - q)), OLD_OFFSET)
    augmented = np.concatenate([hidden, np.sqrt(RIDGE * len(hidden)) * np.eye(d)])
    (u1, u2), *_ = np.linalg.lstsq(augmented, np.concatenate([np.stack([target, is_new], 1), np.zeros((d, 2))]),
                                   rcond=None)[0].T, None
    freq = (counts + 1.0) / (counts.sum() + n_new)
    np.testing.assert_allclose(rows, w_mean + u1 + np.log(freq)[:, None] * u2, rtol=1e-8, atol=1e-10)

    full = np.concatenate([logits, hidden @ rows.T], 1)
    logp = full - np.logaddexp.reduce(full, axis=1, keepdims=True)
    new_mass = np.exp(logp[:, n_base:]).sum(1)
    assert abs(new_mass[is_new].mean() - q) < 0.02
    np.testing.assert_allclose(logp[is_new][:, n_base:] - np.log(new_mass[is_new])[:, None],
                               np.broadcast_to(np.log(freq), (is_new.sum(), n_new)), atol=0.1)
    np.testing.assert_allclose((hidden @ rows.T - (hidden @ w_mean)[:, None])[~is_new], OLD_OFFSET, atol=0.25)


@pytest.mark.slow
def test_expand_fitted_rows_match_a_float64_fit_of_the_expanded_model(toks, tmp_path):
    """End to end: the checkpoint's new output rows are the fit of float64 NumPy Llama hidden states of the same
    windows (merged tokenization, BOS first, model-length windows); input rows are the sub-token means."""
    import numpy_llama
    from allam_jax.data.normalize import normalize_text
    from allam_jax.tokenizer.fit_head import fit_output_rows

    n_base, n_merged = len(load_proto(toks["base"]).pieces), len(load_proto(toks["merged"]).pieces)
    cfg, params = _save_base_checkpoint(tmp_path / "base", n_base)
    (tmp_path / "model.gin").write_text(
        "".join(f"ModelConfig.{k} = {v!r}\n" for k, v in dataclasses.asdict(cfg).items() if k != "vocab_size"))
    r = subprocess.run([sys.executable, "-m", "allam_jax", "expand-checkpoint", "--ckpt", str(tmp_path / "base"),
                        "--base_tokenizer", toks["base"], "--merged_tokenizer", toks["merged"], "--out",
                        str(tmp_path / "fit"), "--init", "fitted", "--model_gin", str(tmp_path / "model.gin")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--init fitted needs --new_text" in r.stderr and not (tmp_path / "fit").exists()
    mcfg = cfg.replace(vocab_size=n_merged)
    report = expand_checkpoint(str(tmp_path / "base"), toks["base"], toks["merged"], str(tmp_path / "fit"), "fitted",
                               fit=HeadFit(mcfg, toks["ar"], toks["en"], windows=6))
    new = jax.device_get(ocp.StandardCheckpointer().restore(tmp_path / "fit/0/state")["params"])
    emb = params["embed"]["embedding"]
    means = _independent_means(toks["base"], toks["merged"], emb)
    spelled = np.asarray([not _sp(toks["merged"]).is_unused(i) for i in range(n_base, n_merged)])
    means[spelled] *= np.linalg.norm(emb.astype(np.float64), axis=1).mean() / np.linalg.norm(means[spelled], axis=1,
                                                                                              keepdims=True)
    np.testing.assert_allclose(new["embed"]["embedding"][n_base:], means, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(new["lm_head"]["kernel"][:, :n_base], params["lm_head"]["kernel"])

    merged, states, is_new, new_ids = _sp(toks["merged"]), [], [], []
    for path, lang_new in ((toks["ar"], True), (toks["en"], False)):
        windows = []
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            ids = [merged.bos_id()] + merged.encode(normalize_text(line))
            windows += [ids[s: s + 64] for s in range(0, len(ids) - 1, 64)]
        for w in windows[:6]:
            states.append(numpy_llama.forward(new, np.asarray([w]), mcfg, return_hidden=True)[0])
            is_new += [lang_new] * len(w)
            if lang_new:
                new_ids += w[1:]
    new_ids = np.asarray(new_ids)
    counts = np.bincount(new_ids[new_ids >= n_base] - n_base, minlength=n_merged - n_base)
    share = float((new_ids >= n_base).mean())
    assert report["fit"]["new_token_share"] == pytest.approx(share)
    want = fit_output_rows(params["lm_head"]["kernel"].T, np.concatenate(states), np.asarray(is_new), counts, share)
    np.testing.assert_allclose(new["lm_head"]["kernel"][:, n_base:].T, want, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_fertility_per_register_diacritised_and_labelled(toks, tmp_path):
    vowelled = ["اَلْعَرَبِيَّةُ لُغَةٌ جَمِيلَةٌ", "كَتَبَ الطَّالِبُ الدَّرْسَ"]
    plain = ["ذهب الطالب إلى المدرسة صباحا", "أعلنت الوزارة نتائج الامتحانات اليوم"]
    (tmp_path / "mixed.txt").write_text("\n".join(vowelled + plain) + "\n", encoding="utf-8")
    (tmp_path / "news.txt").write_text("\n".join(plain) + "\n", encoding="utf-8")
    rows = fertility_table([toks["merged"]], [str(tmp_path / "mixed.txt"), f"modern={tmp_path / 'news.txt'}"])
    by = {r["register"]: r for r in rows if r["language"] == "ar"}
    assert list(by) == ["all", "diacritised", "modern", "undiacritised"]
    sp = _sp(toks["merged"])
    for register, lines in (("diacritised", vowelled), ("undiacritised", plain + plain), ("modern", plain),
                            ("all", vowelled + plain + plain)):
        want = sum(len(sp.encode(x)) for x in lines) / sum(len(x.split()) for x in lines)
        assert by[register]["tokens_per_word"] == pytest.approx(want), register
    assert by["diacritised"]["tokens_per_word"] > by["undiacritised"]["tokens_per_word"]
    r = subprocess.run([sys.executable, "-m", "allam_jax", "tokenizer", "fertility", "--model", toks["merged"],
                        "--text", f"modern={tmp_path / 'news.txt'}"], capture_output=True, text=True)
    assert r.returncode == 0 and "register" in r.stdout.splitlines()[0] and " modern " in r.stdout


def test_merged_model_carries_the_normalisation_to_every_encoder(toks, tmp_path):
    """The merged model itself applies NFC compositions and tatweel removal (and, when asked, strips diacritics):
    sentencepiece, TF-Text and seqio encode raw text as the training pipeline's normalize_text would."""
    import tensorflow as tf
    import tensorflow_text as tf_text

    from allam_jax.data.normalize import normalize_text
    from allam_jax.data.vocabularies import get_vocabulary

    assert load_proto(toks["merged"]).normalizer_spec.name == "allam_nfc_tatweel"
    raw = ["مـــرحبا بالعالم", "ا\u0653لة و\u0654", "cafe\u0301 e\u0301te\u0301", "كَتَبَ الطَّالِبُ"]
    want = [normalize_text(t) for t in raw]
    assert want != raw
    merged, base = _sp(toks["merged"]), _sp(toks["base"])
    tf_tok = tf_text.SentencepieceTokenizer(model=Path(toks["merged"]).read_bytes())
    vocab = get_vocabulary(toks["merged"])
    for r, w in zip(raw, want):
        assert merged.encode(r) == merged.encode(w), r
        assert tf_tok.tokenize(tf.constant([r])).to_list()[0] == merged.encode(w), r
        assert list(vocab.encode(r)) == merged.encode(w), r
    assert base.encode(raw[0]) != base.encode(want[0])  # the rules come with the merged model, not from the library
    merge_tokenizers(toks["base"], toks["add"], str(tmp_path / "plain.model"), normalization="nfc_tatweel_nodiacritics")
    plain = _sp(str(tmp_path / "plain.model"))
    assert plain.encode(raw[3]) == plain.encode(normalize_text(raw[3], strip_diacritics=True))
    merge_tokenizers(toks["base"], toks["add"], str(tmp_path / "asis.model"), normalization="base")
    assert load_proto(str(tmp_path / "asis.model")).normalizer_spec == load_proto(toks["base"]).normalizer_spec


@pytest.mark.slow
def test_also_undiacritised_gives_pieces_for_plain_arabic_without_losing_the_marks(toks, tmp_path):
    from allam_jax.data.normalize import ARABIC_DIACRITICS, normalize_text

    lines = [normalize_text(t) for t in Path(toks["ar"]).read_text(encoding="utf-8").splitlines()]
    vowelled = [t for t in lines if len(ARABIC_DIACRITICS.findall(t)) > 0.2 * len(t.replace(" ", ""))]
    assert len(vowelled) > 100, "the bundled Arabic sample should be mostly vowelled classical text"
    plain = [ARABIC_DIACRITICS.sub("", t) for t in vowelled]
    models = {}
    for name, kwargs in (("as_written", {}), ("both", {"also_undiacritised": True}),
                         ("stripped", {"strip_diacritics": True})):
        train_tokenizer([toks["ar"]], 1500, str(tmp_path / f"{name}.model"), **kwargs)
        models[name] = _sp(str(tmp_path / f"{name}.model"))

    def per_word(sp, texts):
        return sum(len(sp.encode(t)) for t in texts) / sum(len(t.split()) for t in texts)

    def byte_share(sp, texts):
        ids = [i for t in texts for i in sp.encode(t)]
        return sum(sp.is_byte(i) for i in ids) / len(ids)

    assert per_word(models["both"], plain) < per_word(models["as_written"], plain)
    assert byte_share(models["both"], vowelled) < 0.02 < byte_share(models["stripped"], vowelled)


@pytest.mark.parametrize("which", ["base", "add"])
def test_from_hf_turns_transformers_tokenizer_json_back_into_the_same_encoder(toks, tmp_path, which):
    """SentencePiece -> transformers' tokenizer.json -> ``allam tokenizer from-hf``: the result encodes every text as
    the original SentencePiece model and as Hugging Face's own BPE on the json do (the scores rebuilt from ranks)."""
    import tokenizers
    import transformers

    from allam_jax.cli.main import main

    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "tokenizer.model").write_bytes(Path(toks[which]).read_bytes())
    transformers.LlamaTokenizerFast.from_pretrained(tmp_path / "spm").save_pretrained(tmp_path / "hf")
    hf_json = tmp_path / "hf" / "tokenizer.json"
    out = tmp_path / "back.model"
    assert main(["tokenizer", "from-hf", "--tokenizer_json", str(hf_json), "--out", str(out)]) == 0
    original, back = _sp(toks[which]), _sp(str(out))
    hf = tokenizers.Tokenizer.from_file(str(hf_json))
    assert back.get_piece_size() == original.get_piece_size()
    assert [back.id_to_piece(i) for i in range(back.get_piece_size())] == [
        original.id_to_piece(i) for i in range(original.get_piece_size())]
    lines = Path(toks["en"]).read_text(encoding="utf-8").splitlines()[-200:] + \
        Path(toks["ar"]).read_text(encoding="utf-8").splitlines()[-200:]
    lines += ["2026-12-03: 3.14", "🦙 ꙋ 镇", "عربي English مختلط", "tabs\tand\nlines"]
    for text in lines + ["  two  spaces ", "\n", " \n", "\t\t out  "]:  # runs of spaces: transformers 5's json
        expected = original.encode(text)                                  # splits them unlike SentencePiece
        assert back.encode(text) == expected, repr(text)
        if text in lines:
            assert hf.encode(text, add_special_tokens=False).ids == expected, text
    assert (back.bos_id(), back.eos_id(), back.unk_id()) == (original.bos_id(), original.eos_id(), original.unk_id())
    assert main(["tokenizer", "from-hf", "--tokenizer_json", str(hf_json), "--out", str(out)]) == 2  # exists

    # ids in another order than the merges' (as after added pieces): only the ranks may set the scores
    data = json.loads(hf_json.read_text(encoding="utf-8"))
    normal = [p for p, i in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1]) if i >= 259]
    data["model"]["vocab"].update({p: 259 + k for k, p in enumerate(reversed(normal))})
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert main(["tokenizer", "from-hf", "--tokenizer_json", str(shuffled), "--out", str(tmp_path / "s.model")]) == 0
    reordered = _sp(str(tmp_path / "s.model"))
    for text in lines:
        assert reordered.encode(text, out_type=str) == original.encode(text, out_type=str), text


def test_from_hf_refuses_what_it_cannot_convert_in_one_line(tmp_path, capsys):
    from allam_jax.cli.main import main

    wordpiece = tmp_path / "wp.json"
    wordpiece.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}}))
    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"type": "BPE", "vocab": ')
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"model": {"type": "BPE", "unk_token": "<unk>", "vocab": {"<unk>": 0, "a": 2}}}))
    for path, message in ((wordpiece, "model.type is 'WordPiece'"), (broken, "is not a tokenizer.json"),
                          (gap, "model.vocab ids are not 0..1"), (tmp_path / "none.json", "tokenizer.json not found")):
        assert main(["tokenizer", "from-hf", "--tokenizer_json", str(path), "--out", str(tmp_path / "x.model")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x.model").exists()
