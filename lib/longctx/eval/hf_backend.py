"""The local Hugging Face backend: a checkpoint loaded with ``transformers``, answering the same
:class:`~longctx.eval.backends.Backend` interface as a server (see that module for the answer
prefix and the MMLU log-likelihood it shares with the server backends)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from .backends import _PROBE, Generation
from .sample import Sample

__all__ = ["HFBackend"]


class HFBackend:
    """A local ``transformers`` causal LM (a checkpoint folder or hub name)."""

    def __init__(self, model_path: str, *, name: str = "", dtype: str = "bfloat16", device: str = "auto",
                 attn_implementation: str = "sdpa", rope: Any = None, max_position_embeddings: int = 0,
                 context_window: int = 0):
        import torch
        from transformers import AutoModelForCausalLM

        from ..train.rope import install_rope
        from ..core.tokenizer import HFTokenizer

        self.name = name or model_path
        self.model_path = model_path
        self.tokenizer = HFTokenizer(model_path)
        self._hf = self.tokenizer.hf
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=getattr(torch, dtype), attn_implementation=attn_implementation).to(device).eval()
        # RoPE: the checkpoint's own settings, or the override; float64 frequencies either way
        install_rope(self.model, rope, max_position_embeddings or None)
        self.rope_parameters = dict(getattr(self.model.config, "rope_parameters", None) or {})
        self.context_window = context_window or int(self.model.config.max_position_embeddings)
        self._template: int | None = None

    def _render(self, sample: Sample) -> list[int]:
        if sample.chat and self._hf.chat_template and sample.answer_prefix:
            # the prefix as a final assistant message the template renders and leaves open, as vLLM
            # (continue_final_message) and hf_server do: the model sees the text a server gives it
            # (Llama-3's template trims RULER's leading space: "...<|end_header_id|>\n\nThe special")
            text = self._hf.apply_chat_template([{"role": "user", "content": sample.prompt},
                                                 {"role": "assistant", "content": sample.answer_prefix}],
                                                tokenize=False, continue_final_message=True)
            return self._hf(text, add_special_tokens=False)["input_ids"]
        if sample.chat and self._hf.chat_template:
            text = self._hf.apply_chat_template([{"role": "user", "content": sample.prompt}],
                                                tokenize=False, add_generation_prompt=True)
            return self._hf(text, add_special_tokens=False)["input_ids"]
        return self._hf(sample.prompt + sample.answer_prefix, add_special_tokens=True)["input_ids"]

    def template_tokens(self) -> int:
        if self._template is None:
            probe = Sample("probe", "probe", 0, 0, _PROBE, [], 1)
            self._template = len(self._render(probe)) - len(self.tokenizer.encode(_PROBE))
        return self._template

    def describe(self) -> dict[str, Any]:
        return {"backend": "hf", "model_path": self.model_path, "context_window": self.context_window,
                "rope_parameters": self.rope_parameters, "template_tokens": self.template_tokens(),
                "device": self.device}

    def generate(self, samples: Sequence[Sample]) -> list[Generation]:
        import torch

        eos = [i for i in {self._hf.eos_token_id, self._hf.convert_tokens_to_ids("<|eot_id|>")}
               if isinstance(i, int) and i >= 0 and i != self._hf.unk_token_id]
        out = []
        for sample in samples:
            ids = self._render(sample)
            with torch.inference_mode():
                gen = self.model.generate(torch.tensor([ids], device=self.device), do_sample=False,
                                          max_new_tokens=sample.max_new_tokens, eos_token_id=eos or None,
                                          pad_token_id=eos[0] if eos else 0)
            text = self._hf.decode(gen[0, len(ids):], skip_special_tokens=True)
            out.append(Generation(text, len(ids)))
        return out

    def choice_logprobs(self, samples: Sequence[Sample]) -> list[list[float] | str]:
        import torch

        out: list[list[float] | str] = []
        for sample in samples:
            context = self._render(sample)
            # as lm-eval's HFLM: encode context + continuation whole, the continuation is what follows
            wholes = [self._render(replace(sample, prompt=sample.prompt + " " + c)) for c in sample.choices]
            conts = [w[len(context):] for w in wholes]
            if all(len(c) == 1 and w[:len(context)] == context for c, w in zip(conts, wholes)):
                with torch.inference_mode():  # one token each: one forward pass gives all four
                    logits = self.model(torch.tensor([context], device=self.device)).logits[0, -1].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                out.append([float(logprobs[c[0]]) for c in conts])
                continue
            scores = []
            for whole, cont in zip(wholes, conts):  # several tokens: the sum of their log-probabilities
                with torch.inference_mode():
                    logits = self.model(torch.tensor([whole[:-1]], device=self.device)).logits[0].float()
                logprobs = torch.log_softmax(logits[len(whole) - 1 - len(cont):], dim=-1)
                scores.append(float(sum(logprobs[i, t] for i, t in enumerate(cont))))
            out.append(scores)
        return out
