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

from .config import runs_root
from .tokenizer import load_tokenizer, llama3_model_path

__all__ = ["llama3_fast_tokenizer"]

_PROBE = ("<|begin_of_text|>It is a truth universally acknowledged, that a single man in possession "
          "of a good fortune, must be in want of a wife.\n\n\n  CHAPTER 1984 ... isn't it?\t\u00e9t\u00e9"
          "<|eot_id|>")


def llama3_fast_tokenizer(cache_dir: str | Path | None = None):
    """A ``transformers.PreTrainedTokenizerFast`` with Llama-3.1's ids (special tokens included)."""
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    ours = load_tokenizer("llama3")
    cache = Path(cache_dir) if cache_dir else runs_root() / "cache" / "llama3-fast"
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
