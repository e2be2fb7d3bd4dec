"""Algorithm 1 for one document: summaries bottom-up, then hierarchical and diverse QA.

Order of work (all requests go through one :class:`~longctx.llm.client.LLMClient`, which bounds
concurrency and caches every validated response):

* diverse questions only need chunk text, so they start at once, concurrently;
* chunk summaries (concurrent) -> section summaries (concurrent) -> the global summary;
* the hierarchical walk runs step by step, each prompt carrying the previous accepted QA so a
  follow-up can go deeper and a move can ask something new.

Every QA passes :func:`longctx.quality.qa_problem`; a rejected one is asked again with a new seed
up to ``max_qa_attempts``. Duplicate detection for diverse questions runs after the walk, in
index order, so the result does not depend on which request finished first: same seed and same
cache give the same record.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

from .chunking import Chunking
from .corpus import Document
from .generate_params import GenerateParams
from .llm.client import LLMCallFailed, LLMClient
from .prompts import Prompts
from .quality import QuestionIndex, qa_problem, summary_problem
from .walk import DiverseItem, HierStep, plan_diverse, plan_hierarchical

__all__ = ["DocumentFailed", "DocumentResult", "generate_document", "QA_SCHEMA", "SUMMARY_SCHEMA"]

QA_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
             "required": ["question", "answer"]}
SUMMARY_SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}


class DocumentFailed(RuntimeError):
    """A summary could not be generated within the retry limit and ``summary_fallback`` is off;
    the document is skipped and reported."""


@dataclass
class DocumentResult:
    record: dict
    rejects: list[dict] = field(default_factory=list)   # every rejected generation, with reason
    failed_items: list[dict] = field(default_factory=list)  # questions dropped after max attempts
    summary_fallbacks: list[str] = field(default_factory=list)  # summaries replaced by opening sentences


def extractive_summary(text: str, max_words: int = 80) -> str:
    """Opening sentences of ``text`` (about ``max_words`` words): the stand-in for a summary the
    generator failed to write, so one bad summary does not cost the whole document."""
    words = text.split()
    cut = " ".join(words[:max_words])
    end = max(cut.rfind(". "), cut.rfind("? "), cut.rfind("! "))
    return cut[:end + 1] if end > len(cut) // 3 else cut


def request_seed(*parts: object) -> int:
    """A stable 31-bit seed from the run seed, document, item and attempt."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class _DocumentRun:
    def __init__(self, llm: LLMClient, prompts: Prompts, params: GenerateParams, doc: Document,
                 chunking: Chunking, on_request_done: Callable[[], None]):
        self.llm, self.prompts, self.p, self.doc, self.chunking = llm, prompts, params, doc, chunking
        self.on_request_done = on_request_done
        self.result = DocumentResult(record={})
        self.instr = prompts.instructions

    # ------------------------------------------------------------------ one request
    async def _generate(self, stage: str, key: str, attempt: int, prompt: str, schema: dict,
                        max_tokens: int) -> dict | str:
        """Parsed JSON, or a reason string when the request failed."""
        messages = [{"role": "system", "content": self.prompts.system}, {"role": "user", "content": prompt}]
        try:
            result = await self.llm.chat(
                messages, schema=schema, temperature=self.p.temperature, max_tokens=max_tokens,
                seed=request_seed(self.p.seed, self.doc.id, key, attempt), stage=stage, doc_id=self.doc.id)
        except LLMCallFailed as err:
            return f"llm call failed: {err.reason}"
        finally:
            self.on_request_done()
        return result.data

    def _reject(self, kind: str, key: str, attempt: int, reason: str, data: object) -> None:
        entry = {"doc_id": self.doc.id, "kind": kind, "item": key, "attempt": attempt, "reason": reason}
        if isinstance(data, dict):
            entry.update({k: v for k, v in data.items() if k in ("question", "answer", "summary")})
        self.result.rejects.append(entry)

    async def _summary(self, stage: str, key: str, prompt: str, source_text: str) -> str:
        for attempt in range(self.p.max_qa_attempts):
            data = await self._generate(stage, key, attempt, prompt, SUMMARY_SCHEMA, self.p.max_summary_tokens)
            reason = data if isinstance(data, str) else summary_problem(data.get("summary"))
            if reason is None:
                return data["summary"].strip()
            self._reject(stage, key, attempt, reason, data)
        if not self.p.summary_fallback:
            raise DocumentFailed(f"document {self.doc.id!r}: {stage} {key} failed {self.p.max_qa_attempts} "
                                 f"times (last: {self.result.rejects[-1]['reason']})")
        self.result.summary_fallbacks.append(key)
        return extractive_summary(source_text)

    async def _qa(self, stage: str, key: str, first_attempt: int, prompt: str,
                  seen: QuestionIndex | None) -> tuple[dict | None, int]:
        """Accepted ``{question, answer}`` (or None) and the next unused attempt number."""
        attempt = first_attempt
        while attempt < self.p.max_qa_attempts:
            data = await self._generate(stage, key, attempt, prompt, QA_SCHEMA, self.p.max_qa_tokens)
            reason = data if isinstance(data, str) else qa_problem(
                data.get("question"), data.get("answer"), seen or QuestionIndex())
            attempt += 1
            if reason is None:
                return {"question": data["question"].strip(), "answer": data["answer"].strip()}, attempt
            self._reject(stage, key, attempt - 1, reason, data)
        return None, attempt

    # ------------------------------------------------------------------ text helpers
    def _chunk_text(self, cid: int) -> str:
        return self.chunking.chunk_text(self.doc.text, cid).strip()

    @staticmethod
    def _numbered(texts: list[str], label: str) -> str:
        return "\n\n".join(f"{label} {i + 1}: {t}" for i, t in enumerate(texts))

    def _previous(self, previous: dict | None) -> str:
        if previous is None:
            return ""
        return (f"\n{self.instr['previous_header']}\nQ: {previous['question']}\nA: {previous['answer']}\n")

    # ------------------------------------------------------------------ summaries
    async def summaries(self) -> dict:
        title = self.doc.title
        chunk_summaries = await asyncio.gather(*[
            self._summary("summary_chunk", f"chunk-{c.chunk_id}",
                          self.prompts.render("summarize_chunk", title=title, text=self._chunk_text(c.chunk_id)),
                          self._chunk_text(c.chunk_id))
            for c in self.chunking.chunks])
        section_summaries = await asyncio.gather(*[
            self._summary("summary_section", f"section-{s.section_id}", self.prompts.render(
                "summarize_section", title=title,
                chunk_summaries=self._numbered([chunk_summaries[c] for c in s.chunk_ids], "Passage")),
                " ".join(chunk_summaries[c] for c in s.chunk_ids))
            for s in self.chunking.sections])
        global_summary = await self._summary("summary_global", "global", self.prompts.render(
            "summarize_global", title=title, section_summaries=self._numbered(list(section_summaries), "Part")),
            " ".join(section_summaries))
        return {"global": global_summary, "sections": list(section_summaries), "chunks": list(chunk_summaries),
                "fallbacks": self.result.summary_fallbacks}

    # ------------------------------------------------------------------ hierarchical walk
    def _step_prompt(self, step: HierStep, summaries: dict, previous: dict | None) -> str:
        hier = self.instr["hierarchical"]
        instruction = hier["first"] if previous is None else (hier["follow_up"] if step.follow_up else hier["next"])
        common = dict(title=self.doc.title, previous=self._previous(previous), instruction=instruction)
        if step.level == "global":
            return self.prompts.render("question_global", global_summary=summaries["global"],
                                       section_summaries=self._numbered(summaries["sections"], "Part"), **common)
        section = self.chunking.sections[step.section_id]
        if step.level == "section":
            return self.prompts.render(
                "question_section", section_number=step.section_id + 1,
                section_summary=summaries["sections"][step.section_id],
                chunk_summaries=self._numbered([summaries["chunks"][c] for c in section.chunk_ids], "Passage"),
                **common)
        return self.prompts.render("question_chunk", section_number=step.section_id + 1,
                                   section_summary=summaries["sections"][step.section_id],
                                   text=self._chunk_text(step.chunk_ids[0]), **common)

    async def hierarchical(self, steps: list[HierStep], summaries: dict) -> list[dict]:
        accepted: list[dict] = []
        seen = QuestionIndex()
        previous = None
        for step in steps:
            prompt = self._step_prompt(step, summaries, previous)
            qa, _ = await self._qa("hierarchical", f"h{step.index}", 0, prompt, seen)
            if qa is None:
                self.result.failed_items.append({"kind": "hierarchical", "index": step.index, "level": step.level})
                continue
            seen.add(qa["question"])
            previous = qa
            accepted.append({"index": len(accepted), "level": step.level, "section_id": step.section_id,
                             "chunk_ids": list(step.chunk_ids), "follow_up": step.follow_up,
                             "walk_step": step.index, **qa})
        return accepted

    # ------------------------------------------------------------------ diverse questions
    def _diverse_prompt(self, item: DiverseItem) -> str:
        kind = self.prompts.diverse_type(item.type)
        texts = [self._chunk_text(c) for c in item.chunk_ids]
        text = texts[0] if len(texts) == 1 else self._numbered(texts, "Passage")
        return self.prompts.render("question_diverse", title=self.doc.title, text=text,
                                   type_name=kind["name"], type_instruction=kind["instruction"])

    async def diverse(self, items: list[DiverseItem], hierarchical: asyncio.Future) -> list[dict]:
        prompts = {it.index: self._diverse_prompt(it) for it in items}
        next_attempt = {it.index: 0 for it in items}
        accepted: dict[int, dict] = {}
        pending = list(items)
        seen: QuestionIndex | None = None
        while pending:
            outcomes = await asyncio.gather(*[
                self._qa("diverse", f"d{it.index}", next_attempt[it.index], prompts[it.index], None)
                for it in pending])
            if seen is None:  # dedup against the walk's questions, then in index order
                seen = QuestionIndex(q["question"] for q in await hierarchical)
                for qa in accepted.values():
                    seen.add(qa["question"])
            retry = []
            for it, (qa, attempt) in zip(pending, outcomes):
                next_attempt[it.index] = attempt
                if qa is not None and seen.duplicates(qa["question"]):
                    self._reject("diverse", f"d{it.index}", attempt - 1, "duplicate question", qa)
                    qa = None
                if qa is not None:
                    seen.add(qa["question"])
                    accepted[it.index] = {"type": it.type, "chunk_ids": list(it.chunk_ids), "draw": it.index, **qa}
                elif attempt < self.p.max_qa_attempts:
                    retry.append(it)
                else:
                    self.result.failed_items.append({"kind": "diverse", "index": it.index, "type": it.type})
            pending = retry
        return [{"index": i, **accepted[k]} for i, k in enumerate(sorted(accepted))]


async def generate_document(llm: LLMClient, prompts: Prompts, params: GenerateParams, doc: Document,
                            chunking: Chunking, on_request_done: Callable[[], None] = lambda: None
                            ) -> DocumentResult:
    """Summaries, hierarchical QA and diverse QA for one document, as a stage-1 record."""
    run = _DocumentRun(llm, prompts, params, doc, chunking, on_request_done)
    rng = random.Random(f"{params.seed}:{doc.id}")
    steps = plan_hierarchical(params.n_hierarchical, params.n_global_questions,
                              [s.chunk_ids for s in chunking.sections], params.follow_up_probability,
                              params.questions_per_section, rng, params.max_follow_ups)
    items = plan_diverse(params.n_diverse, len(chunking.chunks), params.diverse_types, rng,
                         (params.multi_hop_min_chunks, params.multi_hop_max_chunks))
    loop = asyncio.get_running_loop()
    hierarchical_done: asyncio.Future = loop.create_future()
    diverse_task = asyncio.create_task(run.diverse(items, hierarchical_done))
    try:
        summaries = await run.summaries()
        hierarchical = await run.hierarchical(steps, summaries)
    except BaseException as err:
        if not hierarchical_done.done():
            hierarchical_done.set_exception(err if isinstance(err, Exception) else asyncio.CancelledError())
        diverse_task.cancel()
        await asyncio.gather(diverse_task, return_exceptions=True)
        raise
    hierarchical_done.set_result(hierarchical)
    diverse = await diverse_task
    spans = chunking.spans()
    run.result.record = {
        "id": doc.id, "source": doc.source, "title": doc.title, "text": doc.text,
        "tokenizer": params.tokenizer, "n_tokens": chunking.n_tokens,
        "chunks": spans["chunks"], "sections": spans["sections"], "summaries": summaries,
        "hierarchical_qa": hierarchical, "diverse_qa": diverse,
    }
    return run.result


def expected_requests(params: GenerateParams, chunking: Chunking) -> int:
    """Requests a document needs when nothing is rejected (for the progress bar's total)."""
    return len(chunking.chunks) + len(chunking.sections) + 1 + params.n_hierarchical + params.n_diverse
