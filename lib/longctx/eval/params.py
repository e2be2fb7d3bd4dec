"""Parameters of stage 4 (evaluation): one typed field per knob, one doc line each.

``params/demo/04_evaluate.yaml`` runs the embedded SmolLM2 (llama.cpp) on RULER and the
generated InfiniteBench tasks at 1K-4K tokens in about two minutes on two cores;
``params/paper/04_evaluate.yaml`` evaluates the paper's models at the paper's lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import bad, param
from ..train.rope_settings import RopeSettings  # torch-free: the client runs from the base install
from .babilong import BABILONG_LENGTHS, BABILONG_TASKS, HUB_ID as BABILONG_HUB_ID
from .backends import SERVERS
from .fit import POLICIES
from .infinitebench import IB_TASKS
from .longbench import HUB_ID as LONGBENCH_HUB_ID, LONGBENCH_TASKS
from .ruler import RULER_TASKS

__all__ = ["EvalConfig", "BENCHMARKS"]

BENCHMARKS = ("ruler", "infinitebench", "longbench", "mmlu", "babilong")


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
    babilong_tasks: list[str] = param(list(BABILONG_TASKS), "BABILong tasks (qa1-qa5: the ones with long splits)")
    babilong_lengths: list[str] = param(["0k", "4k"], f"BABILong lengths, of {list(BABILONG_LENGTHS)}")
    n_samples: int = param(2, "samples per task and length of the generated tasks (RULER, generated "
                              "InfiniteBench); RULER's own runs use 500 (scripts/config_tasks.sh)", min=1)
    ruler_qa_doc_order: str = param("fixed", "qa_1/qa_2 document order: 'fixed' = RULER's one seeded shuffle "
                                             "(qa.py; the gold paragraph at one depth per length), "
                                             "'per_sample' = a new order per sample (a mean over depths)",
                                    choices=("fixed", "per_sample"))
    ruler_qa_order_seed: int = param(42, "seed of the fixed qa shuffle (RULER's --random_seed default)")
    hub_max_rows: int = param(0, "rows per LongBench / InfiniteBench hub data set: 0 = every row (comparable "
                                 "with published scores); N = a seeded random N rows, marked as a subsample "
                                 "in the results (evaluate --quick sets 50)", min=0)
    mmlu_shots: int = param(5, "solved examples before each MMLU question", min=0, max=5)
    mmlu_max_questions: int = param(0, "MMLU questions scored, spread over subjects (0 = all 14042)", min=0)
    infinitebench_input_limit: int = param(131072, "tokens every InfiniteBench prompt (with its chat template) "
                                                    "is cut to in the middle before the model's window applies: "
                                                    "131072 = the official scripts' 128K (eval_yarn_mistral.py), "
                                                    "0 = the model's own window (a 1M model reads whole books); "
                                                    "the results' input_limit column says which", min=0)
    mmlu_scoring: str = param("loglikelihood", "'loglikelihood': the arg-max over the log-probabilities of ' A'..' D' "
                                               "after the prompt, as lm-eval's multiple_choice (server: top-k "
                                               "logprobs of /completions); 'generate': the first letter of a greedy "
                                               "2-token reply", choices=("loglikelihood", "generate"))
    mmlu_top_logprobs: int = param(20, "k of the top-k log-probabilities asked from a server in loglikelihood mode "
                                       "(vLLM's default limit is 20)", min=1)
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
    infinitebench_dir: str = param("", "local copy of the xinrongzhang2022/InfiniteBench repo ({task}.jsonl per "
                                       "task), read as the hub is; infinitebench_files take precedence")
    longbench_files: dict[str, str] = param({}, "data set -> local file with LongBench rows (the mirror's "
                                                "columns, or the release's data/*.jsonl)")
    longbench_hub_id: str = param(LONGBENCH_HUB_ID, "parquet mirror of LongBench v1 that datasets 5 loads (the "
                                                    "one lm-eval reads), or a local folder in its layout")
    babilong_hub_id: str = param(BABILONG_HUB_ID, "BABILong on the hub (100 rows per task and length), or a local "
                                                  "folder in its layout")
    babilong_prompts_file: str = param("", "booydar/babilong's babilong/prompts.py (official prompt texts, read as a "
                                           "literal); '' = the texts of lm-eval's babilong task files")
    mmlu_dev_path: str = param("", "local file with cais/mmlu dev rows ('' = the hub)")
    mmlu_test_path: str = param("", "local file with cais/mmlu test rows ('' = the hub)")
    # --- outputs
    output_dir: str = param("runs/evaluate", "results.csv (appended), predictions and manifest per run")
    cache_dir: str = param("runs/eval_cache", "prepared samples and token counts, reused across runs "
                           "(under the run root: LONGCTX_RUNS moves it)")
    run_id: str = param("", "name of this run ('' = model name + time)")

    def check(self) -> None:
        for name in self.benchmarks:
            if name not in BENCHMARKS:
                raise bad("benchmarks", f"unknown benchmark {name!r}; valid: {list(BENCHMARKS)}")
        for key, values, valid in (("ruler_tasks", self.ruler_tasks, RULER_TASKS),
                                   ("infinitebench_tasks", self.infinitebench_tasks, IB_TASKS),
                                   ("longbench_tasks", self.longbench_tasks, LONGBENCH_TASKS),
                                   ("babilong_tasks", self.babilong_tasks, BABILONG_TASKS),
                                   ("babilong_lengths", self.babilong_lengths, BABILONG_LENGTHS)):
            unknown = [v for v in values if v not in valid]
            if unknown:
                raise bad(key, f"unknown task(s) {unknown}; valid: {list(valid)}")
        if 0 < self.infinitebench_input_limit < 256:
            raise bad("infinitebench_input_limit", f"a limit of {self.infinitebench_input_limit} tokens leaves no "
                                                   "room for a prompt; 131072 = the official 128K, 0 = none")
        too_long = [n for n in self.infinitebench_lengths if self.infinitebench_input_limit and
                    "infinitebench" in self.benchmarks and n > self.infinitebench_input_limit]
        if too_long:
            raise bad("infinitebench_lengths", f"generated lengths {too_long} exceed infinitebench_input_limit "
                                               f"{self.infinitebench_input_limit}: the cut would remove their middle "
                                               "(keys, needles); set the limit to 0 or the lengths below it")
        for key in ("ruler_lengths", "infinitebench_lengths"):
            small = [n for n in getattr(self, key) if n < 256]
            if small:
                raise bad(key, f"lengths must be >= 256 tokens, got {small}")
        if self.backend == "hf" and not self.hf_model_path:
            raise bad("hf_model_path", "the hf backend needs a checkpoint folder or hub name")
        if self.rope is not None and self.backend != "hf":
            raise bad("rope", "a RoPE override applies to the hf backend; a server takes it from the "
                              "checkpoint config it serves")
