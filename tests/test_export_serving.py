"""The stage 3 -> 4 joint: an export is servable as it stands.

``checkpoint.export_hf`` of the demo's tiny model (Llama-3's vocabulary) writes the tokenizer,
the chat template and the generation config next to the weights; ``AutoTokenizer`` loads them
(transformers 5, and pyproject's floor 4.56 from ``.venv-floor``) and ``apply_chat_template`` of
a stage-2 sample's messages gives exactly the token ids stage 2 trained on."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fixtures.austen_qa import write_austen_qa  # noqa: E402

from longctx.concat.stage import ConcatConfig, Concatenator, StageSpec  # noqa: E402
from longctx.core.config import load_params  # noqa: E402
from longctx.train import checkpoint, dist  # noqa: E402
from longctx.train.config import TrainConfig  # noqa: E402
from longctx.train.model import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLOOR_PYTHON = Path(os.environ.get("LONGCTX_TRANSFORMERS4_PYTHON", ROOT / ".venv-floor" / "bin" / "python"))


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("export")
    cfg = load_params(TrainConfig, ROOT / "params/demo/03_train.yaml",
                      {"stages": [{"name": "s", "seq_len": 64, "rope": {"type": "default", "theta": 1e6}}]})
    assert cfg.tiny.vocab_size == 128256  # the demo's tiny model has Llama-3's vocabulary
    checkpoint.export_hf(build_model(cfg, cfg.stages[0], dist.init(sp=1)), tmp / "hf")
    return tmp / "hf"


@pytest.fixture(scope="module")
def stage2(tmp_path_factory) -> tuple[list[dict], list[int]]:
    """A real stage-2 sample: its chat as messages, and its token ids."""
    tmp = tmp_path_factory.mktemp("concat")
    cfg = ConcatConfig(qa_path=str(write_austen_qa(tmp / "qa.jsonl")), stages=[StageSpec("6K", 6144, 2, 2)], seed=1)
    concat = Concatenator(cfg)
    plan = next(concat.plans(cfg.stages[0]))
    turns = concat.layout.turns(plan, with_text=True)
    messages = [{"role": "system", "content": cfg.system_prompt}] + [
        {"role": t.role, "content": "".join(t.texts)} for t in turns[1:]]
    return messages, concat.build(plan).input_ids.tolist()


def _ids(out) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_export_carries_tokenizer_template_generation_config_and_fingerprint(export):
    from transformers import AutoTokenizer, GenerationConfig

    names = {p.name for p in export.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
            "generation_config.json", "longctx_fingerprint.json"} <= names
    # the template is Llama-3.1's stock one, the same text the stage-2 template test checks against
    assert (export / "chat_template.jinja").read_text() == (ROOT / "tests/fixtures/llama31_chat_template.jinja").read_text()
    generation = GenerationConfig.from_pretrained(export)
    assert generation.do_sample is False and generation.eos_token_id == [128001, 128008, 128009]
    tok = AutoTokenizer.from_pretrained(export)
    assert tok("Emma")["input_ids"][0] == 128000 and tok.eos_token == "<|eot_id|>"
    fingerprint = json.loads((export / "longctx_fingerprint.json").read_text())
    assert set(fingerprint["files"]) == names - {"longctx_fingerprint.json"}


def test_apply_chat_template_of_the_export_renders_stage_2s_chat(export, stage2):
    """Same text, same turns, same system block; the ids agree wherever stage 2's pieces meet at a
    pre-tokenisation boundary (see the strict xfail below for where they do not)."""
    from transformers import AutoTokenizer

    messages, ids = stage2
    tok = AutoTokenizer.from_pretrained(export)
    served = _ids(tok.apply_chat_template(messages, tokenize=True))
    assert tok.decode(served) == tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    special = set(tok.all_special_ids) | {128006, 128007, 128009}
    assert [i for i in served if i in special] == [i for i in ids if i in special]   # every turn boundary
    system_end = ids.index(128009) + 1
    assert served[:system_end] == ids[:system_end]                # the system block evaluation shares
    # what the server sends at evaluation: the same system block, then the user turn and the header
    prompt = _ids(tok.apply_chat_template(messages[:2], tokenize=True, add_generation_prompt=True))
    assert prompt[:system_end] == ids[:system_end] and prompt[-4:] == tok.encode(
        "<|start_header_id|>assistant<|end_header_id|>\n\n", add_special_tokens=False)[-4:]


@pytest.mark.xfail(strict=True, reason="stage 2 tokenises a document's closing '.\n' and the '\n\n' before the "
                   "next question as two pieces ([627, 271]) where the rendered text tokenises as one ([4286]): "
                   "the trained ids differ from what a server renders at those joins (concat.layout)")
def test_apply_chat_template_of_the_export_gives_stage_2s_exact_ids(export, stage2):
    from transformers import AutoTokenizer

    messages, ids = stage2
    assert _ids(AutoTokenizer.from_pretrained(export).apply_chat_template(messages, tokenize=True)) == ids


@pytest.mark.skipif(not FLOOR_PYTHON.is_file(), reason=f"no transformers 4.x interpreter at {FLOOR_PYTHON} "
                    "(./dev setup builds it, or set LONGCTX_TRANSFORMERS4_PYTHON)")
def test_lowest_supported_transformers_loads_the_tokenizer_and_template(export, stage2, tmp_path):
    """transformers 4.56 renders the export's chat to the ids transformers 5 does (same system
    block as stage 2), adds BOS, and reads the greedy generation config."""
    from transformers import AutoTokenizer

    messages, stage2_ids = stage2
    ids = _ids(AutoTokenizer.from_pretrained(export).apply_chat_template(messages, tokenize=True))
    (tmp_path / "messages.json").write_text(json.dumps(messages))
    probe = ("import json, sys, transformers\n"
             "from transformers import AutoTokenizer, GenerationConfig\n"
             "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
             "messages = json.load(open(sys.argv[2]))\n"
             "ids = tok.apply_chat_template(messages, tokenize=True)\n"
             "g = GenerationConfig.from_pretrained(sys.argv[1])\n"
             "print(json.dumps({'version': transformers.__version__, 'ids': list(ids), 'bos': tok('a')['input_ids'][0],\n"
             "                  'eos': g.eos_token_id, 'greedy': not g.do_sample}))\n")
    out = subprocess.run([str(FLOOR_PYTHON), "-c", probe, str(export), str(tmp_path / "messages.json")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["version"].startswith("4.") and seen["ids"] == ids
    system_end = stage2_ids.index(128009) + 1
    assert seen["ids"][:system_end] == stage2_ids[:system_end]
    assert seen["bos"] == 128000 and seen["eos"] == [128001, 128008, 128009] and seen["greedy"]
