"""Training samples use Llama-3.1's stock chat template, the one evaluation renders prompts with.

Reference: transformers' ``apply_chat_template`` with Llama-3.1-8B-Instruct's official chat
template (``fixtures/llama31_chat_template.jinja``; the hub is unreachable here) on the Hugging
Face fast tokenizer built offline from Meta's ``tokenizer.model``.
"""

from pathlib import Path

import numpy as np
import pytest
from fixtures.austen_qa import write_austen_qa

from longctx.concat.chat import Llama3Chat, Turn
from longctx.concat.stage import DEFAULT_SYSTEM_PROMPT, ConcatConfig, Concatenator, StageSpec
from longctx.core.tokenizer import load_tokenizer

TEMPLATE = (Path(__file__).parent / "fixtures" / "llama31_chat_template.jinja").read_text()


@pytest.fixture(scope="module")
def fast():
    pytest.importorskip("transformers")
    from longctx.core.fast_tokenizer import llama3_fast_tokenizer
    tok = llama3_fast_tokenizer()
    tok.chat_template = TEMPLATE
    return tok


def _template_ids(fast, messages):
    out = fast.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)  # a BatchEncoding in newer transformers


def _ours(chat, messages):
    turns = []
    if messages[0]["role"] != "system":  # the stock template writes a system turn regardless
        messages = [{"role": "system", "content": ""}] + messages
    for m in messages:
        text = chat.system_text(m["content"]) if m["role"] == "system" else m["content"]
        turns.append(Turn(m["role"], [np.asarray(chat.tokenizer.encode(text), dtype=np.int32)]))
    return chat.encode(turns).input_ids.tolist()


@pytest.mark.parametrize("system", [DEFAULT_SYSTEM_PROMPT, "  Be brief.\n", "", None])
def test_chat_ids_equal_apply_chat_template(fast, system):
    chat = Llama3Chat(load_tokenizer("llama3"))
    messages = [{"role": "user", "content": "Document 1: Emma\n\nEmma Woodhouse, handsome, clever, and rich.\n\n"
                                            "Question about Document 1 (Emma): Who is handsome?"},
                {"role": "assistant", "content": "Emma Woodhouse."},
                {"role": "user", "content": "Question about Document 1 (Emma): And rich?"},
                {"role": "assistant", "content": "Yes: clever, and rich."}]
    if system is not None:
        messages = [{"role": "system", "content": system}] + messages
    assert _ours(chat, messages) == _template_ids(fast, messages)


def test_a_stage2_sample_renders_as_the_stock_template_does(fast, tmp_path):
    """A real sample: its text equals the template's rendering of the same messages, and its
    system turn (the part evaluation shares) has identical ids."""
    qa = write_austen_qa(tmp_path / "qa.jsonl")
    cfg = ConcatConfig(qa_path=str(qa), stages=[StageSpec("6K", 6144, 2, 2)], seed=1)
    concat = Concatenator(cfg)
    plan = next(concat.plans(cfg.stages[0]))
    turns = concat.layout.turns(plan, with_text=True)
    assert turns[0].role == "system"
    messages = [{"role": "system", "content": cfg.system_prompt}] + [
        {"role": t.role, "content": "".join(t.texts)} for t in turns[1:]]
    assert Llama3Chat.render_text(turns) == fast.apply_chat_template(messages, tokenize=False)
    ids = concat.build(plan).input_ids.tolist()
    reference = _template_ids(fast, messages[:1])
    assert ids[:len(reference)] == reference
    assert concat.layout.fixed_tokens == len(reference)
