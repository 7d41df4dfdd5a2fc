"""The ``allam`` command's fd-2 filter: TF-Text's SentencePiece chatter is dropped, nothing else is lost."""

import os
import subprocess
import sys
import textwrap

import pytest
import sentencepiece as spm

from allam_jax.core import stderr_filter


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", **env})


def test_dropped_lines_go_python_and_crash_lines_stay(tmp_path):
    code = """
        import os, sys
        from allam_jax.core import stderr_filter
        assert stderr_filter.install()
        os.write(2, b"normalizer.cc(51) LOG(INFO) precompiled_charsmap is empty. use identity normalization.\\n")
        sys.stderr.write("\\rtrain:  50%|#####     | 1/2")
        sys.stderr.flush()
        os.write(2, b"a C++ line kept\\n")
        print("a Python line", file=sys.stderr)
        os.write(2, b"F0000 fatal: the last words before an abort\\n")
        os.abort()
    """
    out = _run(code)
    err = out.stderr.decode()
    assert out.returncode != 0
    assert "precompiled_charsmap" not in err
    for kept in ("\rtrain:  50%|#####     | 1/2", "a C++ line kept\n", "a Python line\n",
                 "F0000 fatal: the last words before an abort\n"):
        assert kept in err, (kept, err)
    opted_out = _run(code, ALLAM_VERBOSE_STARTUP="1")
    assert "AssertionError" in opted_out.stderr.decode()  # install() says no and leaves fd 2 alone


@pytest.mark.slow
def test_tf_text_sentencepiece_line_is_the_one_dropped(tmp_path):
    """TF-Text's own message (captured before the filter) matches the pattern, and after it no such line shows."""
    lines = [f"word{i} thing{i % 7} other{i % 13} piece{i % 29}" for i in range(400)]
    (tmp_path / "text.txt").write_text("\n".join(lines))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "text.txt"), model_prefix=str(tmp_path / "m"),
                                   vocab_size=50, model_type="unigram", normalization_rule_name="identity",
                                   minloglevel=2)
    code = f"""
        import os, sys, tempfile
        import tensorflow as tf, tensorflow_text as tf_text
        from allam_jax.core import stderr_filter
        model = open({str(tmp_path / "m.model")!r}, "rb").read()
        def tokenize():
            tf_text.SentencepieceTokenizer(model=model).tokenize(tf.constant(["word1 thing1"]))
        with tempfile.TemporaryFile() as before:
            saved = os.dup(2)
            os.dup2(before.fileno(), 2)
            tokenize()
            os.dup2(saved, 2)
            before.seek(0)
            sys.stdout.write(before.read().decode())
        assert stderr_filter.install()
        tokenize()
        tokenize()
        os.write(2, b"after\\n")
    """
    out = _run(code)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    said = [line for line in out.stdout.decode().splitlines() if "precompiled_charsmap" in line]
    assert said and all(any(p.decode() in line for p in stderr_filter.DROPPED) for line in said), said
    err = out.stderr.decode()
    assert "precompiled_charsmap" not in err and err.endswith("after\n"), err[-2000:]
