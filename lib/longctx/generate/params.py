"""Parameters of stage 1 (QA generation): one typed field per knob, one doc line each.

Defaults are the paper's method settings (25 hierarchical + 50 diverse questions per book, 4K
chunks under 12K sections, 32 requests in flight). ``params/demo/01_generate_qa.yaml`` shrinks
the run for a laptop; ``params/paper/01_generate_qa.yaml`` points at the paper's books and a
72B generator.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import bad, param
from .corpus import REMOVED_FROM_MAIN
from .walk import DIVERSE_TYPES
from .windows import DEFAULT_WINDOW_TOKENS

__all__ = ["GenerateParams", "PROMPT_OVERHEAD_TOKENS"]

# Tokens a question prompt adds around its passages (instructions, summaries, previous QA);
# used only to check that prompts fit the embedded server's context.
PROMPT_OVERHEAD_TOKENS = 1024


@dataclass
class GenerateParams:
    # --- corpus
    corpus: str = param("austen", "'austen', a folder of .txt, a .jsonl/.parquet file, or 'hf:<dataset id>'")
    corpus_data_files: str = param("", "data_files for an hf: corpus (e.g. the books file of Long-Data-Collections)")
    corpus_split: str = param("train", "split of an hf: corpus")
    corpus_revision: str = param("", "commit (full hash), tag or branch of an hf: corpus (empty = main); required for "
                                     "files deleted from main, such as Long-Data-Collections' pretrain/book.jsonl.zst")
    corpus_shards_dir: str = param("", "folder of corpus shard files written by one pass of "
                                       "'python -m longctx.generate.corpus_shards' (empty = none): a --shard i/n run then "
                                       "reads only its files instead of the whole corpus; n must divide their count")
    text_field: str = param("text", "field holding the document text in jsonl/parquet/hf rows (a.b = nested)")
    id_field: str = param("id", "field holding the document id (row number when absent; a.b = nested)")
    title_field: str = param("title", "field holding the document title (id when absent; a.b = nested, "
                                      "e.g. meta.short_book_title)")
    max_documents: int = param(0, "process at most this many usable documents (0 = all)", min=0)
    max_document_tokens: int = param(0, "cut each document to at most this many tokens at a chunk "
                                        "boundary (0 = whole document; the demo uses it to fit its time budget)", min=0)
    max_window_tokens: int = param(DEFAULT_WINDOW_TOKENS,
                                   "split a longer document into windows of at most this many tokens, cut at "
                                   "chunk boundaries, each a document of its own (id '<id>#w<k>', own summaries "
                                   "and QA) that stage 2 can place whole; default: the largest per-document slot "
                                   "of params/paper/02_concatenate.yaml less its QA (longctx.generate.windows); "
                                   "0 = whole documents (stage 2 then cuts those longer than a slot)", min=0)
    # --- outputs
    output_dir: str = param("runs/generate", "where qa.jsonl, manifest.json and the work folder go")
    cache_dir: str = param("", "request cache folder (empty = <output_dir>/cache); share it between runs to reuse answers")
    # --- tokens and chunks
    tokenizer: str = param("llama3", "'llama3' (offline Meta Llama-3.1 tokenizer) or a Hugging Face tokenizer name/path")
    small_chunk_tokens: int = param(4096, "token budget of a small chunk (paper: about 4K)", min=1)
    medium_chunk_tokens: int = param(12288, "token budget of a section of consecutive chunks (paper: about 12K)", min=1)
    # --- the method
    n_hierarchical: int = param(25, "hierarchical questions per document (paper: 25)", min=0)
    n_diverse: int = param(50, "diverse questions per document (paper: 50)", min=0)
    n_global_questions: int = param(2, "of the hierarchical questions, how many are about the whole document", min=0)
    questions_per_section: int = param(2, "hierarchical questions the walk spends per section visit on average "
                                          "(fewer: more sections get a question; 2 visits 11 of a 180K book's 15 "
                                          "sections; a visit ends when the walk moves on, not after a fixed count)",
                                       min=1)
    follow_up_probability: float = param(0.5, "chance that the next question after a chunk question goes deeper on "
                                              "the same chunk (exploit) rather than moving on to a new chunk or the "
                                              "next section (explore), at every book length", min=0.0, max=1.0)
    max_follow_ups: int = param(2, "longest run of follow-up questions; the walk then moves on", min=0)
    diverse_types: list[str] = param(list(DIVERSE_TYPES), "pool of diverse question types, drawn uniformly")
    multi_hop_min_chunks: int = param(2, "fewest chunks a multi-hop question spans", min=2)
    multi_hop_max_chunks: int = param(4, "most chunks a multi-hop question spans", min=2)
    max_qa_attempts: int = param(3, "generations per question or summary before it counts as failed "
                                    "(each retry uses a new seed); a failed question is replaced within qa_budget", min=1)
    qa_budget: float = param(2.0, "QA generations a document may spend per requested question, retries and "
                                  "replacements included (separately for hierarchical and diverse); "
                                  "what is still missing then is reported as shortfall", min=1.0)
    min_answer_support: float = param(0.4, "least share of an answer's content words found in the text its "
                                           "question was asked from (0 = no support check; lenient, as thematic "
                                           "answers word things their own way)", min=0.0, max=1.0)
    judge_qa: bool = param(False, "also ask the generator whether each accepted answer is supported by its "
                                  "source (one more request per QA; prompts/judge_qa.txt)")
    max_judge_tokens: int = param(32, "completion budget of a judge request", min=8)
    summary_fallback: bool = param(True, "when a summary fails every attempt, use the passage's opening sentences "
                                         "(listed under summaries.fallbacks) instead of dropping the document")
    prompts_dir: str = param("", "folder whose template files override the built-in prompts (empty = built-in)")
    seed: int = param(0, "seed for the walk, the diverse draws and the generator's sampling")
    # --- generator
    llm_base_url: str = param("", "OpenAI-compatible base URL, e.g. http://host:8000/v1 (empty = embedded llama.cpp server)")
    llm_model: str = param("SmolLM2-135M-Instruct", "model name sent to the endpoint")
    llm_api_key_env: str = param("", "NAME of the environment variable holding the API key (the key itself never goes in params)")
    max_concurrency: int = param(32, "requests in flight at once for the whole run: each of limits_shared_by "
                                     "processes takes 1/N (paper: 32)", min=1)
    documents_in_flight: int = param(4, "documents processed at the same time", min=1)
    request_timeout_s: float = param(300.0, "seconds before a request counts as timed out and is retried", min=1.0)
    max_http_attempts: int = param(6, "attempts per request on 429/5xx/timeouts/bad JSON before it fails", min=1)
    stall_timeout_s: float = param(60.0, "seconds from a response's headers to its last byte before it counts as "
                                         "timed out (0 = only request_timeout_s)", min=0.0)
    requests_per_minute: float = param(0.0, "provider's RPM limit for the whole run, kept by the client; each of "
                                            "limits_shared_by processes takes 1/N (0 = none)", min=0.0)
    tokens_per_minute: float = param(0.0, "provider's TPM limit (prompt + completion tokens) for the whole run, "
                                          "kept by the client; each of limits_shared_by processes takes 1/N "
                                          "(0 = none)", min=0.0)
    limits_shared_by: int = param(1, "processes that run at once against the same endpoint and share "
                                     "max_concurrency, requests_per_minute and tokens_per_minute: an array's "
                                     "'%N' (python -m longctx.generate.launch sets it); 1 for a task with its own "
                                     "server, where the limits are per server", min=1)
    max_cost_usd: float = param(0.0, "stop the whole run (every shard of output_dir) once its spend, summed over "
                                     "the shards' progress files, reaches this many USD at the params' prices "
                                     "(0 = no cap); a rerun with a higher cap resumes where it stopped", min=0.0)
    adaptive_concurrency: bool = param(True, "halve the requests in flight on a 429, grow back by one per answered "
                                             "round (counted in the manifest under llm_limits)")
    response_format: str = param("json_schema", "structured output mode sent to the server",
                                 choices=("json_schema", "json_object", "none"))
    temperature: float = param(0.7, "sampling temperature of every request", min=0.0)
    top_p: float = param(0.0, "nucleus sampling sent with every request (0 = not sent: the server's default; "
                              "vLLM applies the model's generation_config.json unless served with "
                              "--generation-config vllm, as slurm/generate_vllm.sbatch does)", min=0.0, max=1.0)
    max_summary_tokens: int = param(400, "completion budget of a summary request", min=16)
    max_qa_tokens: int = param(300, "completion budget of a question-answer request", min=16)
    price_input_per_mtok: float = param(0.0, "USD per million prompt tokens, for the cost estimate", min=0.0)
    price_output_per_mtok: float = param(0.0, "USD per million completion tokens, for the cost estimate", min=0.0)
    # --- dry-run projection (--dry-run extrapolates from the documents it ran to the whole corpus)
    corpus_documents: int = param(0, "documents in the whole corpus, for the dry run's projection "
                                     "(0 = only the documents the dry run saw; the paper used 7,772 books)", min=0)
    projection_servers: int = param(1, "generator servers working at once, for the projected wall time", min=1)
    server_prompt_tokens_per_s: float = param(
        15000.0, "prompt (prefill) tokens per second one server sustains; default: Qwen2-72B bf16 at TP 8 on "
                 "H100, 2 x 72.7e9 FLOP per token at 30 % of 8 x 989 TFLOP/s ~ 16,300, rounded down; "
                 "measure yours (vLLM's benchmark_serving) and set it", min=1.0)
    server_completion_tokens_per_s: float = param(
        1800.0, "completion (decode) tokens per second one server sustains across its batch; default: "
                "Qwen2-72B at TP 8 on H100, weights read once per step (145 GB / (8 x 3.35 TB/s x 60 %) ~ 9 ms) "
                "x ~32 sequences decoding ~ 3,550, halved for KV-cache reads and prefill interleaving", min=1.0)
    prefix_cache_tokens: int = param(
        1_000_000, "KV-cache tokens one server keeps for prefix reuse, for the dry run's bounded-cache measure "
                   "(0 = measure only an unbounded cache); default: Qwen2-72B at TP 8 on H100, 90 % of 640 GB "
                   "less 145 GB of weights and ~40 GB of activations ~ 390 GB, at 320 KiB per token "
                   "(80 layers x 8 KV heads x 128 x K,V x 2 bytes) ~ 1.2 M, rounded down", min=0)
    # --- embedded server (used when llm_base_url is empty)
    embedded_n_ctx: int = param(8192, "context of the embedded llama.cpp server, shared by its slots", min=512)
    embedded_parallel: int = param(1, "request slots of the embedded server (each gets n_ctx / parallel tokens); "
                                      "1 keeps answers byte-identical across kills and reruns", min=1)
    embedded_threads: int = param(0, "CPU threads of the embedded server (0 = all cores but one, safe on a "
                                     "shared machine); the count changes the answers, so pin it for identical reruns", min=0)
    # --- scale-out
    shard_index: int = param(0, "this process's slice of the corpus (see --shard i/n)", min=0)
    shard_count: int = param(1, "number of slices the corpus is split into", min=1)
    progress: bool = param(True, "show a live progress bar with ETA (a plain line every progress_interval_s "
                                 "where stderr is not a terminal: SLURM logs, notebooks)")
    progress_interval_s: float = param(15.0, "seconds between progress lines in a log and between rewrites of "
                                             "the shard's progress.json (read by longctx.generate.status and "
                                             "by the other shards' cost cap)", min=0.1)

    def check(self) -> None:
        if self.medium_chunk_tokens < self.small_chunk_tokens:
            raise bad("medium_chunk_tokens", f"must be >= small_chunk_tokens ({self.small_chunk_tokens}), "
                                             f"got {self.medium_chunk_tokens}")
        if self.n_global_questions > self.n_hierarchical:
            raise bad("n_global_questions", f"must be <= n_hierarchical ({self.n_hierarchical}), "
                                            f"got {self.n_global_questions}")
        if self.multi_hop_max_chunks < self.multi_hop_min_chunks:
            raise bad("multi_hop_max_chunks", f"must be >= multi_hop_min_chunks ({self.multi_hop_min_chunks}), "
                                              f"got {self.multi_hop_max_chunks}")
        unknown = sorted(set(self.diverse_types) - set(DIVERSE_TYPES))
        if unknown or not self.diverse_types:
            raise bad("diverse_types", f"unknown type {unknown[0]!r}; choose from {list(DIVERSE_TYPES)}"
                      if unknown else "needs at least one type")
        if self.max_document_tokens and self.max_document_tokens < self.small_chunk_tokens:
            raise bad("max_document_tokens", f"must be 0 or >= small_chunk_tokens ({self.small_chunk_tokens}), "
                                             f"got {self.max_document_tokens}")
        if self.max_window_tokens and self.max_window_tokens < self.medium_chunk_tokens:
            raise bad("max_window_tokens", f"must be 0 or >= medium_chunk_tokens ({self.medium_chunk_tokens}): a "
                                           f"window is a document with sections of its own, got {self.max_window_tokens}")
        deleted = REMOVED_FROM_MAIN.get((self.corpus.removeprefix("hf:"), self.corpus_data_files))
        if self.corpus.startswith("hf:") and deleted and not self.corpus_revision:
            raise bad("corpus_revision", f"{self.corpus_data_files} was deleted from {self.corpus[3:]}'s main "
                                         f"branch in commit {deleted}: set corpus_revision to a commit before it "
                                         "(params/paper/01_generate_qa.yaml says how to find one)")
        if self.limits_shared_by > self.max_concurrency:
            raise bad("limits_shared_by", f"{self.limits_shared_by} processes at once cannot share max_concurrency "
                                          f"{self.max_concurrency} (each needs at least one request in flight): "
                                          "raise max_concurrency or run fewer tasks at once")
        if self.shard_index >= self.shard_count:
            raise bad("shard_index", f"must be < shard_count ({self.shard_count}), got {self.shard_index}")
        if not self.llm_base_url:
            slot = self.embedded_n_ctx // self.embedded_parallel
            widest = self.small_chunk_tokens * (self.multi_hop_max_chunks if "multi_hop" in self.diverse_types else 1)
            need = widest + PROMPT_OVERHEAD_TOKENS + self.max_qa_tokens
            if need > slot:
                raise bad("small_chunk_tokens",
                          f"a prompt of {widest} passage tokens + {PROMPT_OVERHEAD_TOKENS} overhead + "
                          f"{self.max_qa_tokens} completion = {need} tokens does not fit an embedded server "
                          f"slot of {slot} (embedded_n_ctx {self.embedded_n_ctx} / embedded_parallel "
                          f"{self.embedded_parallel}); lower small_chunk_tokens or multi_hop_max_chunks, "
                          "or raise embedded_n_ctx")

    @property
    def uses_embedded_server(self) -> bool:
        return not self.llm_base_url
