"""Parameters of stage 4 (evaluation): one typed field per knob, one doc line each.

``params/demo/04_evaluate.yaml`` runs the embedded SmolLM2 (llama.cpp) on RULER and the
generated InfiniteBench tasks at 1K-4K tokens in about two minutes on two cores;
``params/paper/04_evaluate.yaml`` evaluates the paper's models at the paper's lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import bad, param
from ..train.rope_settings import RopeSettings  # torch-free: the client runs from the base install
from .backends import SERVERS
from .fit import POLICIES
from .infinitebench import IB_TASKS
from .longbench import LONGBENCH_TASKS
from .ruler import RULER_TASKS

__all__ = ["EvalConfig", "BENCHMARKS"]

BENCHMARKS = ("ruler", "infinitebench", "longbench", "mmlu")


@dataclass
class EvalConfig:
    # --- the model
    model_name: str = param("SmolLM2-135M-Instruct", "label of the model in the results table")
    backend: str = param("openai", "'openai' (any OpenAI-compatible server, or the embedded llama.cpp one) "
                                   "or 'hf' (a local transformers checkpoint)", choices=("openai", "hf"))
    llm_base_url: str = param("", "OpenAI-compatible base URL, e.g. http://host:8000/v1 (empty = start the "
                                  "embedded llama.cpp server with SmolLM2-135M-Instruct)")
    llm_model: str = param("SmolLM2-135M-Instruct", "model name sent to the server")
    llm_server: str = param("auto", "how the server continues an answer prefix: vllm, sglang, llamacpp, or "
                                    "openai (prefix in the user turn); auto = ask the server", choices=SERVERS)
    llm_api_key_env: str = param("", "NAME of the environment variable holding the API key (never the key)")
    max_concurrency: int = param(1, "requests in flight at once (openai backend)", min=1)
    embedded_threads: int = param(0, "CPU threads of the embedded llama.cpp server (0 = all cores but one, "
                                     "safe on a shared machine; the demo uses both: 2x faster prompts when "
                                     "nothing else runs)", min=0)
    model_path: str = param("", "the served checkpoint (an export's hf/ folder, or a GGUF file): its content "
                                "fingerprint keys the cached answers, so a retrained model served under "
                                "the same name gets its own (slurm/evaluate.sbatch sets it)")
    model_fingerprint: str = param("", "fingerprint of the served weights when model_path cannot be read "
                                       "here ('' = model_path's, else what the server reports)")
    reuse_answers_by_name: bool = param(False, "without a fingerprint, reuse cached answers by the served "
                                               "name (a hosted API whose name pins the model); false = "
                                               "answers are reused within the same run_id only")
    request_timeout_s: float = param(600.0, "seconds per request before it counts as failed", min=1.0)
    hf_model_path: str = param("", "checkpoint folder or hub name (hf backend); stage 3 writes its RoPE "
                                   "settings into the checkpoint's config, and they are used")
    hf_dtype: str = param("bfloat16", "torch dtype of the hf backend", choices=("bfloat16", "float16", "float32"))
    hf_device: str = param("auto", "'auto' (cuda when present), 'cpu' or 'cuda:N'")
    attn_implementation: str = param("sdpa", "transformers attention: sdpa, flash_attention_2, eager")
    rope: RopeSettings | None = param(None, "override the checkpoint's RoPE (hf backend); null = the "
                                           "checkpoint's own. The zero-shot 1M baseline sets it")
    max_position_embeddings: int = param(0, "window to set together with rope (0 = keep the checkpoint's)", min=0)
    tokenizer: str = param("", "tokenizer that sizes prompts: '' = the backend's own (hf: the checkpoint's, "
                               "openai: 'server' = the server's /tokenize), 'llama3', or a HF name/path")
    context_window: int = param(0, "model window in tokens (0 = ask the backend)", min=0)
    template_tokens: int = param(-1, "tokens the chat template adds (-1 = measure through the backend)", min=-1)
    # --- the suite
    benchmarks: list[str] = param(["ruler", "infinitebench"], f"any of {list(BENCHMARKS)}")
    ruler_tasks: list[str] = param(list(RULER_TASKS), "RULER tasks (all 13 by default)")
    ruler_lengths: list[int] = param([4096], "RULER context lengths in tokens (4K..1M)")
    infinitebench_tasks: list[str] = param(list(IB_TASKS), "InfiniteBench tasks (generated and hub)")
    infinitebench_lengths: list[int] = param([4096], "lengths of the generated InfiniteBench tasks")
    longbench_tasks: list[str] = param(list(LONGBENCH_TASKS), "LongBench v1 data sets")
    n_samples: int = param(2, "samples per task and length of the generated tasks (RULER, generated "
                              "InfiniteBench)", min=1)
    hub_max_rows: int = param(0, "rows per LongBench / InfiniteBench hub data set: 0 = every row (comparable "
                                 "with published scores); N = a seeded random N rows, marked as a subsample "
                                 "in the results (evaluate --quick sets 50)", min=0)
    mmlu_shots: int = param(5, "solved examples before each MMLU question", min=0, max=5)
    mmlu_max_questions: int = param(0, "MMLU questions scored, spread over subjects (0 = all 14042)", min=0)
    truncation: str = param("middle", "what happens to a prompt that does not fit the window: middle / "
                                      "left / right cut (reported per sample) or skip", choices=POLICIES)
    max_new_tokens_cap: int = param(0, "cap every task's generation budget (0 = the official budgets)", min=0)
    seed: int = param(0, "seed of the generated data (same seed, same samples)")
    # --- data
    haystack_corpus: str = param("austen", "prose haystack of the RULER essay tasks (a corpus spec, see "
                                           "longctx.generate.corpus): Jane Austen's novels by default")
    verify_lengths: bool = param(True, "tokenise each generated prompt once to confirm its length")
    squad_path: str = param("", "local file with rajpurkar/squad_v2 rows ('' = the hub)")
    hotpotqa_path: str = param("", "local file with hotpotqa/hotpot_qa distractor rows ('' = the hub)")
    infinitebench_files: dict[str, str] = param({}, "task -> local file with xinrongzhang2022/InfiniteBench rows")
    longbench_files: dict[str, str] = param({}, "data set -> local file with THUDM/LongBench rows")
    longbench_hub_id: str = param("THUDM/LongBench", "hub id of LongBench v1")
    mmlu_dev_path: str = param("", "local file with cais/mmlu dev rows ('' = the hub)")
    mmlu_test_path: str = param("", "local file with cais/mmlu test rows ('' = the hub)")
    # --- outputs
    output_dir: str = param("runs/evaluate", "results.csv (appended), predictions and manifest per run")
    cache_dir: str = param("data/eval_cache", "prepared samples and token counts, reused across runs")
    run_id: str = param("", "name of this run ('' = model name + time)")

    def check(self) -> None:
        for name in self.benchmarks:
            if name not in BENCHMARKS:
                raise bad("benchmarks", f"unknown benchmark {name!r}; valid: {list(BENCHMARKS)}")
        for key, values, valid in (("ruler_tasks", self.ruler_tasks, RULER_TASKS),
                                   ("infinitebench_tasks", self.infinitebench_tasks, IB_TASKS),
                                   ("longbench_tasks", self.longbench_tasks, LONGBENCH_TASKS)):
            unknown = [v for v in values if v not in valid]
            if unknown:
                raise bad(key, f"unknown task(s) {unknown}; valid: {list(valid)}")
        for key in ("ruler_lengths", "infinitebench_lengths"):
            small = [n for n in getattr(self, key) if n < 256]
            if small:
                raise bad(key, f"lengths must be >= 256 tokens, got {small}")
        if self.backend == "hf" and not self.hf_model_path:
            raise bad("hf_model_path", "the hf backend needs a checkpoint folder or hub name")
        if self.rope is not None and self.backend != "hf":
            raise bad("rope", "a RoPE override applies to the hf backend; a server takes it from the "
                              "checkpoint config it serves")
