"""A Hugging Face *fast* Llama-3.1 tokenizer built offline from Meta's ``tokenizer.model``.

The stage-2 benchmark and the segment-join test compare our piecewise token assembly with the
plain approach: render the chat as text and encode it with the Hugging Face fast tokenizer.
The hub is unreachable, so we build that tokenizer with transformers' own tiktoken conversion
(``TikTokenConverter``) from the same BPE ranks, pattern and special tokens as
:func:`longctx.core.tokenizer.load_tokenizer` and cache ``tokenizer.json`` under
``runs/cache/llama3-fast/``. :func:`llama3_fast_tokenizer` checks that its ids equal ours on a
probe text before returning it.
"""

from __future__ import annotations

from pathlib import Path

from .config import project_root
from .tokenizer import load_tokenizer, llama3_model_path

__all__ = ["llama3_fast_tokenizer", "llama3_chat_tokenizer", "LLAMA31_CHAT_TEMPLATE", "LLAMA31_EOS_IDS"]

_PROBE = ("<|begin_of_text|>It is a truth universally acknowledged, that a single man in possession "
          "of a good fortune, must be in want of a wife.\n\n\n  CHAPTER 1984 ... isn't it?\t\u00e9t\u00e9"
          "<|eot_id|>")


def llama3_fast_tokenizer(cache_dir: str | Path | None = None):
    """A ``transformers.PreTrainedTokenizerFast`` with Llama-3.1's ids (special tokens included)."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    ours = load_tokenizer("llama3")
    cache = Path(cache_dir) if cache_dir else project_root() / "runs" / "cache" / "llama3-fast"
    path = cache / "tokenizer.json"
    if not path.is_file():
        from transformers.convert_slow_tokenizer import TikTokenConverter

        encoding = ours.encoding  # the tiktoken Encoding, as transformers' own converter reads it
        rust = TikTokenConverter(vocab_file=str(llama3_model_path()), pattern=encoding._pat_str,
                                 extra_special_tokens=encoding._special_tokens).converted()
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        rust.save(str(partial))
        partial.replace(path)
    fast = PreTrainedTokenizerFast(tokenizer_object=RustTokenizer.from_file(str(path)),
                                   bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    theirs = fast(_PROBE, add_special_tokens=False)["input_ids"]
    body = _PROBE[len("<|begin_of_text|>"):-len("<|eot_id|>")]
    expected = [ours.special_id("<|begin_of_text|>"), *ours.encode(body), ours.special_id("<|eot_id|>")]
    if theirs != expected:
        raise RuntimeError(f"converted fast tokenizer disagrees with tiktoken on the probe text "
                           f"({path}); delete it to rebuild")
    return fast


LLAMA31_CHAT_TEMPLATE = Path(__file__).resolve().parent / "data" / "llama31_chat_template.jinja"
# Llama-3.1-Instruct's end-of-turn ids: <|end_of_text|>, <|eom_id|>, <|eot_id|> (its generation_config)
LLAMA31_EOS_IDS = (128001, 128008, 128009)


def llama3_chat_tokenizer(cache_dir: str | Path | None = None):
    """:func:`llama3_fast_tokenizer` as Llama-3.1-Instruct ships it: BOS added to every encoded
    text (the released ``tokenizer.json``'s post-processor) and the stock chat template, whose
    system block (date lines) is the one stage 2 writes into every training sample
    (:data:`longctx.concat.chat.LLAMA31_SYSTEM_PREAMBLE`). Saved into every export (stage 3)."""
    from tokenizers import processors

    fast = llama3_fast_tokenizer(cache_dir)
    bos = fast.convert_tokens_to_ids("<|begin_of_text|>")
    fast.backend_tokenizer.post_processor = processors.Sequence([
        fast.backend_tokenizer.post_processor,
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    fast.chat_template = LLAMA31_CHAT_TEMPLATE.read_text(encoding="utf-8")
    fast.model_max_length = 1 << 40  # no limit of its own: the model's config says the window
    return fast
