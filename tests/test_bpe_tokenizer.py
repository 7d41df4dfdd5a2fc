"""Byte-level BPE (HF tokenizer.json, as Llama-3 / Qwen ship) through train --kind bpe, merge, fertility, the seqio
pipeline and expand-checkpoint, each checked against Hugging Face `tokenizers` itself."""

import itertools
import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tokenizers import Tokenizer, processors

from allam_jax.data.language import arabic_fraction
from allam_jax.model import Decoder
from allam_jax.tokenizer.bpe import iter_documents, train_bpe
from allam_jax.tokenizer.expand import expand_checkpoint
from allam_jax.tokenizer.interface import load_tokenizer
from helpers import allam, bundled_dir
from test_tokenizer import _save_base_checkpoint

EDGE_CASES = ["", " ", "Hello, world!", "emoji 😀🚀 and 👍🏽", "Mixed: the school المدرسة 2024 مفتوحة!",
              "كَتَبَ الطَّالِبُ الدَّرْسَ", "مـــرحبا", "\n\nتجربة\ttab", "!!! ???", "ﻻ ﷲ ٣٤٥"]


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict:
    """A recipe-style English base (specials at 0-2), a Llama-3-style base (id 0 is '!', specials after the
    vocabulary, a BOS template), Arabic pieces learned with the base's pre-tokenizer, and both merges."""
    d = tmp_path_factory.mktemp("bpe")
    data = bundled_dir()
    en, ar = str(data / "en.txt"), str(data / "ar_modern.txt")
    for args in (["--input", en, "--vocab_size", "1500", "--out", str(d / "base.json")],
                 ["--input", ar, "--vocab_size", "2500", "--base", str(d / "base.json"), "--out", str(d / "ar.json"),
                  "--max_sentences", "20000"]):
        r = allam("tokenizer", "train", "--kind", "bpe", *args)
        assert r.returncode == 0, r.stderr[-2000:]
    # Llama-3's layout: the learned vocabulary from id 0, then the special tokens, and a BOS template
    train_bpe(iter_documents([en]), 1500, str(d / "l3_plain.json"), base=str(d / "base.json"))
    l3 = Tokenizer.from_file(str(d / "l3_plain.json"))
    l3.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    l3.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                      special_tokens=[("<|begin_of_text|>", 1500)])
    l3.save(str(d / "llama3like.json"))
    for base, out in (("base.json", "merged.json"), ("llama3like.json", "l3_merged.json")):
        r = allam("tokenizer", "merge", "--base", str(d / base), "--add", str(d / "ar.json"), "--out", str(d / out))
        assert r.returncode == 0, r.stderr[-2000:]
    return {"dir": d, "en_txt": en, "ar_txt": ar, **{k: str(d / f"{k}.json") for k in
                                            ("base", "ar", "merged", "llama3like", "l3_merged")}}


def _lines(path: str, n: int, skip: int = 0) -> list[str]:
    return list(itertools.islice(iter_documents([path]), skip, skip + n))


@pytest.mark.slow
@pytest.mark.parametrize("base,merged", [("base", "merged"), ("llama3like", "l3_merged")])
def test_merge_keeps_base_ids_and_english_and_hf_agrees(toks, base, merged):
    b_json, m_json = (json.loads(Path(toks[k]).read_text()) for k in (base, merged))
    for piece, i in b_json["model"]["vocab"].items():
        assert m_json["model"]["vocab"][piece] == i
    assert {t["content"]: t["id"] for t in b_json["added_tokens"]}.items() <= \
        {t["content"]: t["id"] for t in m_json["added_tokens"]}.items()
    merges = {tuple(m) for m in m_json["model"]["merges"]}
    assert all(tuple(m) in merges for m in b_json["model"]["merges"]), "every base merge is kept"
    hf_base, hf_merged = Tokenizer.from_file(toks[base]), Tokenizer.from_file(toks[merged])
    for t in b_json["added_tokens"]:  # as Hugging Face loads them, not only as the file says
        assert hf_merged.token_to_id(t["content"]) == hf_base.token_to_id(t["content"]) == t["id"]
    assert all(hf_merged.id_to_token(i) == hf_base.id_to_token(i) for i in range(hf_base.get_vocab_size()))
    assert hf_merged.get_vocab_size() % 128 == 0 and hf_merged.get_vocab_size() > hf_base.get_vocab_size() + 1000
    english = [t for t in _lines(toks["en_txt"], 3000) if not re.search("[\u0600-\u06ff]", t)]
    assert len(english) > 2000
    assert [hf_merged.encode(t).ids for t in english] == [hf_base.encode(t).ids for t in english]
    ours = load_tokenizer(toks[merged])
    for text in EDGE_CASES + _lines(toks["ar_txt"], 300, skip=30000) + english[:200]:
        assert ours.encode(text) == hf_merged.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ours.encode(text)) == hf_merged.decode(hf_merged.encode(text).ids) == text


@pytest.mark.slow
def test_stage_merges_of_a_progressive_expansion_are_prefixes_of_the_full_merge(toks, tmp_path):
    """``max_new`` unpadded (a stage of the recipe's progressive arm): each stage extends the one before, the full
    merge extends the last, and Hugging Face encodes a stage's Arabic with that stage's ids only."""
    stages = []
    for n in (150, 600):
        out = str(tmp_path / f"stage{n}.json")
        r = allam("tokenizer", "merge", "--base", toks["base"], "--add", toks["ar"], "--out", out, "--max_new", str(n),
                  "--pad_to_multiple", "1")
        assert r.returncode == 0, r.stderr[-2000:]
        stages.append(out)
    chain = [toks["base"], *stages, toks["merged"]]
    for smaller, larger in zip(chain, chain[1:]):
        load_tokenizer(larger).check_extends(load_tokenizer(smaller))
    sizes = [Tokenizer.from_file(p).get_vocab_size() for p in chain]
    assert sizes[1] - sizes[0] == 150 and sizes[2] - sizes[0] == 600 and sizes[2] < sizes[3]
    first = Tokenizer.from_file(stages[0])
    arabic = _lines(toks["ar_txt"], 200, skip=30000)
    ids = [i for t in arabic for i in first.encode(t, add_special_tokens=False).ids]
    assert max(ids) < sizes[1] and sum(i >= sizes[0] for i in ids) > len(ids) / 4
    assert [load_tokenizer(stages[0]).encode(t) for t in arabic[:50]] == [
        first.encode(t, add_special_tokens=False).ids for t in arabic[:50]]


@pytest.mark.slow
def test_fertility_of_either_kind_and_the_arabic_gain(toks, tmp_path):
    held_out = tmp_path / "heldout_ar.txt"
    held_out.write_text("\n".join(_lines(toks["ar_txt"], 500, skip=40000)) + "\n", encoding="utf-8")
    r = allam("tokenizer", "fertility", "--model", toks["base"], toks["merged"], "--text", f"modern={held_out}",
              toks["en_txt"], "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {(row["model"], row["language"], row["register"]): row for row in json.loads(r.stdout)}
    base_ar, merged_ar = rows[(toks["base"], "ar", "modern")], rows[(toks["merged"], "ar", "modern")]
    hf = Tokenizer.from_file(toks["merged"])
    docs = held_out.read_text(encoding="utf-8").splitlines()
    words = sum(len(d.split()) for d in docs)
    assert merged_ar["tokens_per_word"] == pytest.approx(
        sum(len(hf.encode(d, add_special_tokens=False).ids) for d in docs) / words)
    assert merged_ar["tokens_per_word"] < base_ar["tokens_per_word"] / 3
    assert merged_ar["vocab_size"] == hf.get_vocab_size()


@pytest.mark.slow
def test_seqio_batches_are_hf_encodings_with_id_zero_kept(toks):
    """A Llama-3-style vocabulary (id 0 = '!') through the seqio tasks and packer: each segment's targets are HF's
    encoding of one document plus EOS, '!' (id 0) included; the inputs start with its BOS."""
    from allam_jax.data.pipeline import SeqioData
    from allam_jax.data.tasks import CorpusPaths

    hf = Tokenizer.from_file(toks["l3_merged"])
    assert hf.token_to_id("!") == 0
    bos, eos = hf.token_to_id("<|begin_of_text|>"), hf.token_to_id("<|end_of_text|>")
    encoded = [hf.encode(t.strip(), add_special_tokens=False).ids + [eos] for t in
               _lines(toks["en_txt"], 6000) + _lines(toks["ar_txt"], 3000)]
    docs: dict = {}
    for d in encoded:
        docs.setdefault(tuple(d[-8:]), []).append(d)
    paths = CorpusPaths(en=[toks["en_txt"]], ar=[toks["ar_txt"]], parallel=[str(bundled_dir() / "parallel.jsonl")])
    data = SeqioData(paths=paths, vocabulary=toks["l3_merged"],
                     rates={"en_pretrain": 0.5, "ar_pretrain": 0.5}, rate_unit="examples", shuffle_buffer=100)
    it = data.make_iterator(seq_len=512, batch_size=4)
    zeros = whole = 0
    for _ in range(6):
        batch = next(it)
        for row in range(4):
            seg = batch["segment_ids"][row]
            for s in np.unique(seg[seg > 0]):
                idx = np.nonzero(seg == s)[0]
                targets = batch["targets"][row, idx].tolist()
                assert batch["inputs"][row, idx[0]] == bos
                zeros += targets.count(0)
                if targets[-1] == eos and len(targets) > 8:  # a document, or its last piece (split at 512)
                    whole += 1
                    candidates = docs.get(tuple(targets[-8:]), [])
                    assert any(list(d[-len(targets):]) == targets for d in candidates), hf.decode(targets)[:80]
    it.close()
    assert whole > 5 and zeros > 0, (whole, zeros)


@pytest.mark.slow
def test_expand_checkpoint_means_of_the_base_spelling(toks, tmp_path):
    """New rows are float64 means of the base rows over the base's own encoding of each new piece's text (HF
    tokenizers, whole-word pieces); old rows and English logits unchanged; --init fitted fits on the merged
    tokenizer's encodings; a foreign base is refused."""
    hf_base = Tokenizer.from_file(toks["base"])
    base_n, merged_n = load_tokenizer(toks["base"]).vocab_size, load_tokenizer(toks["merged"]).vocab_size
    cfg, params = _save_base_checkpoint(tmp_path / "ckpt", base_n, tie=False)
    report = expand_checkpoint(str(tmp_path / "ckpt"), toks["base"], toks["merged"], str(tmp_path / "out"))
    assert (report["base_vocab"], report["merged_vocab"]) == (base_n, merged_n)
    new = ocp.StandardCheckpointer().restore(tmp_path / "out/0/state")["params"]
    emb, new_emb = params["embed"]["embedding"], np.asarray(new["embed"]["embedding"])
    np.testing.assert_array_equal(new_emb[:base_n], emb)
    merged = Tokenizer.from_file(toks["merged"])
    checked = 0
    for i in range(base_n, merged_n):
        text = merged.decode([i])
        if merged.id_to_token(i).startswith("<|") or not re.fullmatch(r" ?[\u0621-\u064a]+", text):
            continue  # padding, or a piece of less than a word: its bytes are not text the pre-tokenizer keeps whole
        ids = hf_base.encode(text, add_special_tokens=False).ids
        np.testing.assert_allclose(new_emb[i], emb[ids].astype(np.float64).mean(0), rtol=1e-6, atol=1e-7)
        checked += 1
    assert checked > 500, checked
    text = _lines(toks["en_txt"], 1, skip=7)[0]
    ids = jnp.asarray([hf_base.encode(text, add_special_tokens=False).ids[:40]])
    before = Decoder(cfg).apply({"params": params}, ids)
    after = Decoder(cfg.replace(vocab_size=merged_n)).apply({"params": new}, ids)
    np.testing.assert_allclose(np.asarray(after[..., :base_n]), np.asarray(before), rtol=1e-6, atol=1e-6)
    # --init fitted: the windows it fits on are the merged tokenizer's encodings (HF's), after its BOS
    from allam_jax.data.normalize import normalize_text
    from allam_jax.tokenizer.fit_head import HeadFit

    for name, lines in (("ar", _lines(toks["ar_txt"], 40, skip=100)), ("en", _lines(toks["en_txt"], 40))):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    fit = HeadFit(cfg.replace(vocab_size=merged_n), str(tmp_path / "ar.txt"), str(tmp_path / "en.txt"), windows=6)
    report = expand_checkpoint(str(tmp_path / "ckpt"), toks["base"], toks["merged"], str(tmp_path / "fit"), "fitted",
                               fit=fit)
    bos = merged.token_to_id("<|begin_of_text|>")
    windows, rows = [], [[bos] + merged.encode(normalize_text(t), add_special_tokens=False).ids
                         for t in (tmp_path / "ar.txt").read_text(encoding="utf-8").splitlines()]
    for row in rows:  # model-length (64) windows, the first 6 fitted on
        windows += [row[s: s + 64] for s in range(0, len(row) - 1, 64)]
    ids = np.concatenate([w[1:] for w in windows[:6]])
    assert report["fit"]["new_token_share"] == pytest.approx(float((ids >= base_n).mean()))
    fitted = np.asarray(ocp.StandardCheckpointer().restore(tmp_path / "fit/0/state")["params"]["lm_head"]["kernel"])
    np.testing.assert_array_equal(fitted[:, :base_n], params["lm_head"]["kernel"])
    assert np.isfinite(fitted).all()
    assert not np.allclose(fitted[:, base_n:], np.asarray(new["lm_head"]["kernel"])[:, base_n:])  # fitted, not means
    r = allam("expand-checkpoint", f"--ckpt={tmp_path / 'ckpt'}", "--base_tokenizer", toks["llama3like"],
              "--merged_tokenizer", toks["merged"], "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "does not extend" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1500:]
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_other_tokenizer_types_and_mixed_kinds_are_refused(toks, tmp_path):
    from tokenizers import models, pre_tokenizers

    for name, model in (("wordpiece", models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")),
                        ("unigram", models.Unigram([("<unk>", 0.0), ("a", -1.0)], 0, False))):
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.save(str(tmp_path / f"{name}.json"))
        r = allam("tokenizer", "fertility", "--model", str(tmp_path / f"{name}.json"), "--text", toks["en_txt"])
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-1500:]
        assert re.search(rf"{name}.json: model type \w+ is not supported", r.stderr), r.stderr
    spm_like = json.loads(Path(toks["base"]).read_text())
    spm_like["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": False}
    (tmp_path / "spm_like.json").write_text(json.dumps(spm_like))
    r = allam("tokenizer", "merge", "--base", str(tmp_path / "spm_like.json"), "--add", toks["ar"],
              "--out",
              str(tmp_path / "m.json"))
    assert r.returncode == 2 and "without a ByteLevel pre-tokenizer" in r.stderr, r.stderr[-1500:]
    r = allam("tokenizer", "from-hf", "--tokenizer_json", toks["llama3like"], "--out", str(tmp_path / "l3.model"))
    assert r.returncode == 2 and "byte-level BPE" in r.stderr and "no SentencePiece twin" in r.stderr, r.stderr
    assert not (tmp_path / "l3.model").exists()
    r = allam("tokenizer", "merge", "--base", toks["base"], "--add", toks["ar"], "--out", str(tmp_path / "m.model"))
    assert r.returncode == 2 and "must be of one kind" in r.stderr
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "m.model").exists()
    assert arabic_fraction(Tokenizer.from_file(toks["l3_merged"]).decode(
        Tokenizer.from_file(toks["l3_merged"]).encode("مرحبا").ids)) == 1.0


# The families' own chat templates, as their tokenizer_config.json ships them (Llama-3's verbatim; Qwen3's reduced
# to the branches these conversations take: no tools, no reasoning_content, thinking off)
LLAMA3_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
                   "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
                   "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
                   "{{ content }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN3_TEMPLATE = ("{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + messages[0].content + "
                  "'<|im_end|>\n' }}{%- endif %}{%- set ns = namespace(last_query_index=messages|length - 1) %}"
                  "{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}"
                  "{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 and "
                  "messages[-1].role != 'user' %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}"
                  "{%- for message in messages %}{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + "
                  "'\n' + message.content + '<|im_end|>' + '\n' }}{%- elif message.role == 'assistant' %}"
                  "{%- if loop.index0 > ns.last_query_index and loop.last %}{{- '<|im_start|>' + message.role + "
                  "'\n<think>\n\n</think>\n\n' + message.content }}{%- else %}{{- '<|im_start|>' + message.role + "
                  "'\n' + message.content }}{%- endif %}{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
                  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- if enable_thinking is defined "
                  "and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}")


@pytest.fixture(scope="module")
def chat_tokenizer(toks):
    """The merged Llama-3-style tokenizer with the two families' chat tokens, as a transformers tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_file(toks["l3_merged"])
    tok.add_special_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"])
    path = toks["dir"] / "chat" / "tokenizer.json"
    path.parent.mkdir(exist_ok=True)
    tok.save(str(path))
    (path.parent / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    return str(path), hf


CONVERSATION = [{"role": "system", "content": "أنت مساعد مفيد."},
                {"role": "user", "content": "What is the capital of Egypt?"},
                {"role": "assistant", "content": "عاصمة مصر هي القاهرة."},
                {"role": "user", "content": "وما عدد سكانها؟ Roughly!"},
                {"role": "assistant", "content": "About 10 million, حوالي عشرة ملايين."}]


@pytest.mark.parametrize("preset,template", [("llama3", LLAMA3_TEMPLATE), ("qwen3", QWEN3_TEMPLATE)])
def test_chat_templates_render_transformers_ids(chat_tokenizer, preset, template):
    """encode_conversation / encode_prompt with the gin preset give the ids of transformers' apply_chat_template
    with the family's template, on the byte-level tokenizer (after our start token, for Qwen which has no BOS);
    the loss falls on the answers and their end-of-turn token only."""
    import gin

    from allam_jax import gin_setup
    from allam_jax.align.chat import PRESETS, encode_conversation, encode_prompt
    from allam_jax.data.vocabularies import bos_id, get_vocabulary

    path, hf = chat_tokenizer
    vocab = get_vocabulary(path)
    gin.clear_config()
    gin_setup.parse([f"chat/{preset}.gin"])
    chat = gin_setup.chat_template()
    assert chat == PRESETS[preset]
    bos = bos_id(vocab)
    skip = 0 if preset == "llama3" else 1  # Qwen has no BOS: our sequences start with the vocabulary's start token
    want = hf.apply_chat_template(CONVERSATION, chat_template=template, tokenize=True, return_dict=False)
    ids, weights = encode_conversation(CONVERSATION, vocab, chat, bos)
    assert ids[skip:] == list(want), (hf.decode(ids), hf.decode(want))
    trained = hf.decode([i for i, w in zip(ids, weights) if w])
    end = chat.end_of_turn
    assert trained == f"عاصمة مصر هي القاهرة.{end}About 10 million, حوالي عشرة ملايين.{end}"
    prompt = encode_prompt(CONVERSATION[:4], vocab, chat, bos)
    want = hf.apply_chat_template(CONVERSATION[:4], chat_template=template, tokenize=True, return_dict=False,
                                  add_generation_prompt=True, enable_thinking=False)
    assert prompt[skip:] == list(want), (hf.decode(prompt), hf.decode(want))
    gin.clear_config()


@pytest.mark.slow
def test_qwen3_expanded_with_bpe_exports_and_loads_in_transformers(toks, tmp_path):
    """A tiny random Qwen3 on the Llama-3-style base vocabulary: convert, expand with the byte-level merge, export
    with the merged tokenizer.json; transformers loads model and tokenizer, its ids are HF tokenizers' and its
    logits ours; English logits over the base ids are the base model's."""
    import torch
    import transformers

    from allam_jax.convert.checkpoints import export_to_hf, import_from_hf, restore_for_export
    from allam_jax.convert.hf_config import config_from_hf

    base_n = load_tokenizer(toks["llama3like"]).vocab_size
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen3Config(vocab_size=base_n, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                      max_position_embeddings=128, tie_word_embeddings=False)
    transformers.Qwen3ForCausalLM(hf_cfg).eval().save_pretrained(tmp_path / "hf", safe_serialization=True)
    import_from_hf(str(tmp_path / "hf"), str(tmp_path / "ckpt"), progress=False)
    expand_checkpoint(str(tmp_path / "ckpt"), toks["llama3like"], toks["l3_merged"], str(tmp_path / "expanded"))
    merged_n = load_tokenizer(toks["l3_merged"]).vocab_size
    cfg = config_from_hf(json.loads((tmp_path / "hf" / "config.json").read_text())).replace(
        vocab_size=merged_n, compute_dtype="float32")
    export_to_hf(str(tmp_path / "expanded"), cfg, str(tmp_path / "out"), tokenizer=toks["l3_merged"])
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    text = "The school is open. والمدرسة مفتوحة!"
    hf = Tokenizer.from_file(toks["l3_merged"])
    assert tok(text)["input_ids"] == hf.encode(text).ids and hf.encode(text).ids[0] == hf.token_to_id("<|begin_of_text|>")
    ids = np.array([hf.encode(text).ids], np.int32)
    ours = Decoder(cfg).apply({"params": restore_for_export(str(tmp_path / "expanded"), cfg)}, ids)
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.tensor(ids)).logits.numpy(), np.asarray(ours), atol=1e-4, rtol=1e-4)
    english = np.array([hf.encode("The school is open.").ids], np.int32)
    assert english.max() < base_n
    base_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.tensor(english)).logits.numpy()[..., :base_n],
                                   base_model(torch.tensor(english)).logits.numpy(), atol=1e-4, rtol=1e-4)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["eos_token_id"] == hf.token_to_id(
        "<|end_of_text|>")


def test_chat_loop_with_the_llama3_template_stops_at_its_end_of_turn(chat_tokenizer):
    """`allam chat` with a byte-level vocabulary and the Llama-3 preset: the prompt is the template's generation
    prompt (transformers' ids), and an answer ends at <|eot_id|> (not only at EOS); the next turn carries it."""
    import io

    from allam_jax.align.chat import LLAMA3
    from allam_jax.data.vocabularies import bos_id, get_vocabulary
    from allam_jax.inference.generate import SamplingConfig
    from allam_jax.inference.session import chat_loop

    path, hf = chat_tokenizer
    vocab = get_vocabulary(path)
    answer = hf.encode("مرحبا بك", add_special_tokens=False)
    eot = hf.convert_tokens_to_ids("<|eot_id|>")

    class Scripted:  # the generator's interface as chat_loop uses it; its tokens are scripted
        def __init__(self):
            self.vocab, self.bos_id, self.prompts = vocab, bos_id(vocab), []

        def stream(self, prompts, sampling):
            self.prompts.append(prompts[0])
            for tok in answer + [eot, hf.convert_tokens_to_ids("!")]:
                yield [tok]

    gen, out = Scripted(), io.StringIO()
    turns = chat_loop(gen, SamplingConfig(), system="Be brief.", stdin=io.StringIO("Hello!\nوأنت؟\n\n"), stdout=out,
                      template=LLAMA3)
    assert turns == 2 and out.getvalue().count("allam> مرحبا بك\n") == 2, out.getvalue()
    history = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
               {"role": "assistant", "content": "مرحبا بك"}, {"role": "user", "content": "وأنت؟"}]
    for prompt, messages in zip(gen.prompts, (history[:2], history)):
        assert prompt == list(hf.apply_chat_template(messages, chat_template=LLAMA3_TEMPLATE, tokenize=True,
                                                     return_dict=False, add_generation_prompt=True))


@pytest.mark.slow
def test_beam_cache_holds_hf_encodings_of_a_byte_level_vocabulary(toks, tmp_path):
    """`allam data cache` with a tokenizer.json: each record is Hugging Face's encoding of a cleaned document plus
    EOS, '!' (id 0) included, and the cache names the vocabulary by the file's hash."""
    import tensorflow as tf

    from allam_jax.data.cache_job import run_cache
    from allam_jax.data.sources import CleaningConfig, ParallelRendering, clean_text
    from allam_jax.data.tasks import CorpusPaths

    cleaning = CleaningConfig(min_chars=8)
    en = [t for t in _lines(toks["en_txt"], 200) if "!" in t][:10] + _lines(toks["en_txt"], 10)
    ar = _lines(toks["ar_txt"], 10, skip=500)
    for name, docs in (("en", en), ("ar", ar)):
        (tmp_path / f"{name}.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    paths = CorpusPaths(en=[str(tmp_path / "en.txt")], ar=[str(tmp_path / "ar.txt")], parallel=[])
    run_cache(str(tmp_path / "cached"), paths, toks["l3_merged"], cleaning, ParallelRendering())
    hf = Tokenizer.from_file(toks["l3_merged"])
    eos = hf.token_to_id("<|end_of_text|>")
    spec = {"targets": tf.io.VarLenFeature(tf.int64)}
    for task, docs in (("en_pretrain", en), ("ar_pretrain", ar)):
        files = sorted(str(p) for p in (tmp_path / "cached" / task).glob("train.tfrecord-*"))
        records = sorted(tuple(tf.sparse.to_dense(tf.io.parse_single_example(r, spec)["targets"]).numpy().tolist())
                         for r in tf.data.TFRecordDataset(files))
        want = sorted({tuple(hf.encode(clean_text(d, cleaning), add_special_tokens=False).ids) + (eos,) for d in docs})
        assert records == want
        assert task != "en_pretrain" or any(0 in r for r in records)  # '!' kept
    info = json.loads(next((tmp_path / "cached" / "en_pretrain").glob("info*.json")).read_text())
    assert info["allam"]["vocabulary_fingerprint"].startswith("sha256:")
