"""lm-evaluation-harness adapter: an ``lm_eval`` ``TemplateLM`` named ``allam_jax``.

lm-eval has no plugin discovery for models, so this module registers the class and then runs lm-eval's
own command line unchanged::

    python -m allam_jax.eval.lm_eval_adapter --model allam_jax \\
        --model_args gin_file=runs/tiny_cpu.gin,ckpt=runs/tiny/checkpoints,batch_size=16 \\
        --tasks arc_easy --include_path my_tasks/

(``pip install -e '.[lmeval]'``). From Python, ``AllamLM(gin_file=..., ckpt=...)`` goes straight into
``lm_eval.simple_evaluate(model=...)``.
"""

from __future__ import annotations

import sys
from typing import Optional

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from allam_jax.eval.scorer import LoglikelihoodScorer
from allam_jax.inference.generate import SamplingConfig
from allam_jax.runner import load_generator


@register_model("allam_jax")
class AllamLM(TemplateLM):
    """Log-likelihoods through :class:`LoglikelihoodScorer`, generation through the KV-cache generator."""

    def __init__(self, gin_file: str, ckpt: str, vocabulary: Optional[str] = None, batch_size: int | str = 16,
                 max_gen_toks: int = 256, gin_bindings: str = "", **unused):
        super().__init__()
        bindings = [b for b in gin_bindings.split(";") if b.strip()]
        self.gen = load_generator(gin_file.split("+"), bindings, ckpt, vocabulary)
        self.max_gen_toks = int(max_gen_toks)
        size = 16 if str(batch_size) == "auto" else int(batch_size)
        self.scorer = LoglikelihoodScorer(self.gen.cfg, self.gen.params, self.tok_encode, self.gen.bos_id,
                                          batch_size=size, partitioner=self.gen.partitioner)

    @property
    def eot_token_id(self) -> int:
        return int(self.gen.vocab.eos_id)

    @property
    def prefix_token_id(self) -> int:
        return int(self.gen.bos_id)

    @property
    def max_length(self) -> int:
        return self.gen.cfg.max_seq_len

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs) -> list[int]:
        return [int(t) for t in self.gen.vocab.encode(string)]

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.gen.vocab.decode(list(tokens))

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = []
        for _, context, continuation in requests:
            # the harness already put the prefix (BOS) on an empty context; the scorer adds BOS itself
            context = context[1:] if context[:1] == [self.prefix_token_id] else context
            pairs.append((context, continuation))
        results = self.scorer.loglikelihood_tokens(pairs)
        for (key, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", key, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        step = self.max_length
        for request in requests:
            ids = self.tok_encode(request.args[0])
            windows = [([], ids[i: i + step]) for i in range(0, len(ids), step)] or [([], [self.eot_token_id])]
            out.append(sum(ll for ll, _ in self.scorer.loglikelihood_tokens(windows)))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            sampling = SamplingConfig(
                max_new_tokens=int(kwargs.get("max_gen_toks", self.max_gen_toks)),
                temperature=float(kwargs.get("temperature", 0.0) or 0.0) if kwargs.get("do_sample") else 0.0,
                top_p=float(kwargs.get("top_p", 1.0) or 1.0), stop=tuple(until))
            prompt = self.gen.encode(context)[-(self.max_length - sampling.max_new_tokens):]
            out.append(self.gen.generate([prompt], sampling)[0].text)
        return out


def main() -> int:
    from lm_eval.__main__ import cli_evaluate

    return cli_evaluate() or 0


if __name__ == "__main__":
    sys.exit(main())
