"""Shared builders for the evaluation tests (no tests here): a small prose corpus, hub-shaped
local data files, and a tiny random Llama with its own tokenizer, all made locally."""

from __future__ import annotations

import json
import random
from pathlib import Path

NOUNS = ("river mill garden letter carriage window sister cousin morning evening house road field "
         "village parson dinner ball fortune promise secret journey").split()
ADJS = "quiet old young grave cheerful distant pale bright gentle proud sudden early late".split()
VERBS = "walked spoke wrote waited returned smiled listened travelled hoped wondered".split()


def prose(n_sentences: int, seed: int = 0) -> str:
    """Paragraphs of simple English sentences (a stand-in for the Austen corpus)."""
    rng = random.Random(seed)
    sentences = []
    for i in range(n_sentences):
        s = (f"The {rng.choice(ADJS)} {rng.choice(NOUNS)} {rng.choice(VERBS)} near the "
             f"{rng.choice(ADJS)} {rng.choice(NOUNS)}")
        if rng.random() < 0.3:
            s += f", and her {rng.choice(NOUNS)} {rng.choice(VERBS)} again"
        sentences.append(s + rng.choice([".", ".", "!", "?"]))
        if i % 7 == 6:
            sentences.append("\n\n")
    return " ".join(sentences)


def corpus_dir(tmp: Path, n_sentences: int = 1500) -> Path:
    folder = tmp / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(prose(n_sentences, 1), encoding="utf-8")
    (folder / "b.txt").write_text(prose(n_sentences // 2, 2), encoding="utf-8")
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def squad_rows() -> list[dict]:
    """Rows shaped like rajpurkar/squad_v2 (validation)."""
    rows = []
    for a in range(4):
        for p in range(3):
            context = prose(6, 100 + 10 * a + p) + f" The keeper of the {a}-{p} gate was Mr Elton{a}{p}."
            rows.append({"id": f"q{a}{p}", "title": f"Article{a}", "context": context,
                         "question": f"Who kept the {a}-{p} gate?",
                         "answers": {"text": [f"Mr Elton{a}{p}"], "answer_start": [len(context) - 12]}})
            rows.append({"id": f"u{a}{p}", "title": f"Article{a}", "context": context,
                         "question": "Unanswerable?", "answers": {"text": [], "answer_start": []}})
    return rows


def hotpot_rows() -> list[dict]:
    """Rows shaped like hotpotqa/hotpot_qa (distractor, validation)."""
    rows = []
    for q in range(5):
        titles = [f"Place{q}{k}" for k in range(4)]
        sentences = [[prose(2, 200 + 10 * q + k), f" Place{q}{k} lies by river R{q}{k}."] for k in range(4)]
        rows.append({"id": f"h{q}", "question": f"Which river is Place{q}0 by?", "answer": f"R{q}0",
                     "type": "bridge", "level": "easy",
                     "supporting_facts": {"title": [titles[0]], "sent_id": [1]},
                     "context": {"title": titles, "sentences": sentences}})
    return rows


def infinitebench_rows(task: str) -> list[dict]:
    """Rows shaped like xinrongzhang2022/InfiniteBench (one split per task)."""
    if task == "longbook_choice_eng":
        return [{"id": 0, "context": prose(40, 7), "input": "Who walked?",
                 "answer": ["the sister"], "options": ["the parson", "the sister", "the cousin", "nobody"]}]
    return [{"id": 0, "context": prose(40, 8), "input": "What did the sister do?", "answer": ["she walked"],
             "options": []}]


def longbench_rows(task: str) -> list[dict]:
    """Rows shaped like THUDM/LongBench (config = data set, split test)."""
    classes = ["Description", "Entity", "Location"] if task == "trec" else None
    answer = "Location" if task == "trec" else "the old mill"
    return [{"input": "Where is it?", "context": prose(30, 9), "answers": [answer], "length": 300,
             "dataset": task, "language": "en", "all_classes": classes, "_id": "x0"}]


def mmlu_rows(split: str) -> list[dict]:
    """Rows shaped like cais/mmlu (config all): question, subject, choices, answer (0-3)."""
    rows = []
    n = 5 if split == "dev" else 3
    for subject in ("astronomy", "virology"):
        for i in range(n):
            rows.append({"question": f"{subject} question {i}?", "subject": subject,
                         "choices": ["alpha", "beta", "gamma", "delta"], "answer": i % 4})
    return rows


def tiny_hf_model(tmp: Path, corpus_text: str, max_positions: int = 2048) -> Path:
    """A random 2-layer Llama and a byte-level BPE tokenizer trained on ``corpus_text``, saved as a
    checkpoint folder with a Llama-3-style chat template (nothing downloaded)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp / "tiny-llama"
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([corpus_text, "0123456789 ABCD abcd - : . , ? !"],
                            trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    template = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
                "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    hf_tok.chat_template = template
    hf_tok.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    LlamaForCausalLM(config).save_pretrained(path)
    return path
