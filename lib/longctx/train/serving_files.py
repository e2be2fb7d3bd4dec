"""What makes an export servable as it stands: tokenizer, chat template, generation config, fingerprint.

``save_pretrained`` writes weights and ``config.json`` only; ``vllm serve runs/.../hf`` (and
``AutoTokenizer``) then find no tokenizer. :func:`write_serving_files` adds, next to them:

* the tokenizer the model was trained with: Llama-3's, built offline from Meta's ``tokenizer.model``
  (:func:`longctx.core.fast_tokenizer.llama3_chat_tokenizer`; stage 2 tokenised every sample with
  it), BOS added to encoded text as in the released ``tokenizer.json``;
* Llama-3.1's stock chat template (``chat_template.jinja``, also in ``tokenizer_config.json`` for
  transformers 4.x), whose system block is the one stage 2 writes into every sample;
* ``generation_config.json``: greedy (``do_sample: false``), BOS and the three Llama-3.1 end ids;
* ``longctx_fingerprint.json``: the digest of every file, which keys the evaluation's answers
  (:mod:`longctx.core.fingerprint`), written last.

A model whose vocabulary is smaller than Llama-3's (the 256-token test profile) cannot use this
tokenizer: it gets the generation config and fingerprint only, and a warning says it is not servable.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..core.fast_tokenizer import LLAMA31_EOS_IDS, llama3_chat_tokenizer

__all__ = ["write_serving_files", "LLAMA3_VOCAB"]

LLAMA3_VOCAB = 128256   # ids of Llama-3's tokenizer, special tokens included
log = logging.getLogger("longctx.train")


def write_serving_files(folder: str | Path) -> list[str]:
    """Add the serving files to an export folder holding ``config.json``; returns the names written."""
    from ..core.fingerprint import write_fingerprint

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    written = []
    bos = 128000
    if int(config.get("vocab_size", 0)) >= LLAMA3_VOCAB:
        tok = llama3_chat_tokenizer()
        written += list(tok.save_pretrained(str(folder)))
        # transformers 4.x reads neither the class name transformers 5 writes nor (before 4.50-ish)
        # chat_template.jinja: name the class both know and carry the template inline too
        tc_path = folder / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text(encoding="utf-8"))
        tc.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=tok.chat_template,
                  bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        config.update(bos_token_id=bos, eos_token_id=list(LLAMA31_EOS_IDS))
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        generation = {"bos_token_id": bos, "eos_token_id": list(LLAMA31_EOS_IDS), "do_sample": False,
                      "transformers_version": config.get("transformers_version", "")}
    else:
        log.warning("%s: vocabulary of %s tokens < Llama-3's %d: no tokenizer written, the export is not "
                    "servable", folder, config.get("vocab_size"), LLAMA3_VOCAB)
        generation = {"do_sample": False, "transformers_version": config.get("transformers_version", "")}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    written.append(str(folder / "generation_config.json"))
    write_fingerprint(folder)
    return [Path(w).name for w in written]
