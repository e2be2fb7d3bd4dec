"""Algorithm 1 for one document: summaries bottom-up, then hierarchical and diverse QA.

Order of work (all requests go through one :class:`~longctx.llm.client.LLMClient`, which bounds
concurrency and caches every validated response):

* diverse questions only need chunk text, so they start at once, concurrently (the
  ``hierarchical_aware`` type waits for the summaries it shows);
* chunk summaries (concurrent) -> section summaries (concurrent) -> the global summary;
* the hierarchical walk runs step by step, each prompt carrying the previous accepted QA so a
  follow-up can go deeper and a move can ask something new.

Every QA passes :func:`longctx.generate.quality.qa_problem` (with the support check against the text the
question was asked from) and, with ``judge_qa``, a judge request. Counts: each kind may spend
``qa_budget`` x its requested count in generations. A rejected QA is asked again with a new seed
up to ``max_qa_attempts``; then it is replaced (a diverse question by a fresh draw; a walk step
that was a follow-up by a new question on the same part, else by a new question on the nearest
chunk or section no step asks about, ``walk.alternatives``, at most ``MAX_STEP_ROUNDS`` rounds, so a
contents page or an index costs a few generations, not the document's budget) while the budget
lasts, so the requested counts are met unless the budget runs out; what is missing is reported
as ``shortfall``. The follow-ups planned after a step that moved on follow it where it went.

A follow-up is generated against the QA it is recorded to follow (``follows``, the record just
before it); when the step before it failed, it is asked as a new question instead.

Diverse questions run in rounds of one attempt per open slot; duplicate detection and budget
decisions happen in slot order after each round, so the result does not depend on which request
finished first: same seed and same cache give the same record.

For a server's prefix cache, every prompt about a chunk opens with the chunk's one passage block
(``prompts/passage.txt``; the judge's verdict too) and a diverse round is sent in document order,
so requests on one passage arrive together; the dry run measures the reuse
(``manifest["prefix_cache"]``, :mod:`longctx.llm.prefix_cache`).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from dataclasses import dataclass, field, replace
from typing import Callable

from ..llm.client import LLMCallFailed, LLMClient
from ..llm.errors import BudgetExhausted
from .chunking import Chunking
from .corpus import Document
from .params import GenerateParams
from .prompts import Prompts
from .quality import QuestionIndex, gate_of, qa_problem, summary_problem
from .walk import (SUMMARY_TYPES, DiverseItem, HierStep, alternatives, coverage, plan_diverse,
                   plan_hierarchical)

__all__ = ["DocumentFailed", "DocumentResult", "generate_document", "QA_SCHEMA", "SUMMARY_SCHEMA"]

QA_SCHEMA = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
             "required": ["question", "answer"]}
SUMMARY_SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
# A walk step gets max_qa_attempts generations on its planned part, then as many on each part it
# moves on to (a new question on the same part for a follow-up, else another chunk or section),
# this many rounds in all: a part that can never pass costs a few generations, not the budget.
MAX_STEP_ROUNDS = 3
JUDGE_SCHEMA = {"type": "object", "properties": {"supported": {"type": "boolean"}}, "required": ["supported"]}


class DocumentFailed(RuntimeError):
    """A summary could not be generated within the retry limit and ``summary_fallback`` is off;
    the document is skipped and reported."""


@dataclass
class DocumentResult:
    record: dict
    rejects: list[dict] = field(default_factory=list)   # every rejected generation, with reason
    failed_items: list[dict] = field(default_factory=list)  # questions dropped after max attempts
    summary_fallbacks: list[str] = field(default_factory=list)  # summaries replaced by opening sentences
    shortfall: dict[str, int] = field(default_factory=dict)  # kind -> requested QA still missing
    qa_generations: dict[str, int] = field(default_factory=dict)  # kind -> QA generations spent
    walk: dict[str, dict] = field(default_factory=dict)  # "planned" / "kept" -> walk_summary of the walk


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
                messages, schema=schema, temperature=self.p.temperature, top_p=self.p.top_p or None,
                max_tokens=max_tokens, seed=request_seed(self.p.seed, self.doc.id, key, attempt), stage=stage,
                doc_id=self.doc.id)
        except LLMCallFailed as err:
            return f"llm call failed: {err.reason}"
        finally:
            self.on_request_done()
        return result.data

    def _reject(self, kind: str, key: str, attempt: int, reason: str, data: object, category: str = "") -> None:
        entry = {"doc_id": self.doc.id, "kind": kind, "category": category or kind, "item": key,
                 "attempt": attempt, "reason": reason, "gate": gate_of(reason)}
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

    async def _attempt(self, stage: str, key: str, attempt: int, prompt: str, source: str,
                       seen: QuestionIndex | None, category: str, judge_source: str = "") -> dict | str:
        """One QA generation through the gates (and the judge): the QA, or why it was rejected.
        Names and numbers are checked against the whole prompt (what the generator was shown).
        The judge is shown ``judge_source`` (``source`` laid out as the prompt opens, so the
        server's prefix cache serves it), else ``source``."""
        data = await self._generate(stage, key, attempt, prompt, QA_SCHEMA, self.p.max_qa_tokens)
        reason = data if isinstance(data, str) else qa_problem(
            data.get("question"), data.get("answer"), seen or QuestionIndex(), source, self.p.min_answer_support,
            shown=prompt)
        if reason is None and self.p.judge_qa:
            reason = await self._judge(key, attempt, judge_source or f"<source>\n{source}\n</source>",
                                       data["question"], data["answer"])
        if reason is not None:
            self._reject(stage, key, attempt, reason, data, category)
            return reason
        return {"question": data["question"].strip(), "answer": data["answer"].strip()}

    async def _judge(self, key: str, attempt: int, source: str, question: str, answer: str) -> str | None:
        prompt = self.prompts.render("judge_qa", source=source, question=question, answer=answer)
        verdict = await self._generate("judge", f"{key}-judge", attempt, prompt, JUDGE_SCHEMA,
                                       self.p.max_judge_tokens)
        if isinstance(verdict, str):
            return f"judge: {verdict}"
        return None if verdict["supported"] else "judge: answer not supported"

    # ------------------------------------------------------------------ text helpers
    def _chunk_text(self, cid: int) -> str:
        return self.chunking.chunk_text(self.doc.text, cid).strip()

    def _passage(self, cid: int) -> str:
        """The chunk as the one block (``prompts/passage.txt``) every prompt about it opens with,
        so a server's prefix cache computes it once for all of them."""
        return self.prompts.render("passage", title=self.doc.title, text=self._chunk_text(cid))

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
                          self.prompts.render("summarize_chunk", title=title, text=self._chunk_text(c.chunk_id),
                                              passage=self._passage(c.chunk_id)),
                          self._chunk_text(c.chunk_id))
            for c in self.chunking.chunks])
        section_summaries = await asyncio.gather(*[
            self._summary("summary_section", f"section-{s.section_id}", self.prompts.render(
                "summarize_section", title=title, section_number=s.section_id + 1,
                chunk_summaries=self._numbered([chunk_summaries[c] for c in s.chunk_ids], "Passage")),
                " ".join(chunk_summaries[c] for c in s.chunk_ids))
            for s in self.chunking.sections])
        global_summary = await self._summary("summary_global", "global", self.prompts.render(
            "summarize_global", title=title, section_summaries=self._numbered(list(section_summaries), "Part")),
            " ".join(section_summaries))
        return {"global": global_summary, "sections": list(section_summaries), "chunks": list(chunk_summaries),
                "fallbacks": self.result.summary_fallbacks}

    # ------------------------------------------------------------------ hierarchical walk
    def _step_prompt(self, step: HierStep, follow_up: bool, summaries: dict, previous: dict | None
                     ) -> tuple[str, str, str]:
        """The step's prompt, the text its answer must be supported by and the judge's view of
        that text (empty: the text itself)."""
        hier = self.instr["hierarchical"]
        instruction = hier["first"] if previous is None else (hier["follow_up"] if follow_up else hier["next"])
        common = dict(title=self.doc.title, previous=self._previous(previous), instruction=instruction)
        if step.level == "global":
            parts = self._numbered(summaries["sections"], "Part")
            return (self.prompts.render("question_global", global_summary=summaries["global"],
                                        section_summaries=parts, **common),
                    f"{summaries['global']}\n{parts}", "")
        section = self.chunking.sections[step.section_id]
        if step.level == "section":
            passages = self._numbered([summaries["chunks"][c] for c in section.chunk_ids], "Passage")
            return (self.prompts.render("question_section", section_number=step.section_id + 1,
                                        section_summary=summaries["sections"][step.section_id],
                                        chunk_summaries=passages, **common),
                    f"{summaries['sections'][step.section_id]}\n{passages}", "")
        text, passage = self._chunk_text(step.chunk_ids[0]), self._passage(step.chunk_ids[0])
        return (self.prompts.render("question_chunk", section_number=step.section_id + 1,
                                    section_summary=summaries["sections"][step.section_id], text=text,
                                    passage=passage, **common),
                text, passage)

    async def hierarchical(self, steps: list[HierStep], summaries: dict) -> list[dict]:
        n, max_attempts = len(steps), self.p.max_qa_attempts
        budget, used = math.ceil(self.p.qa_budget * n), 0
        sections = [s.chunk_ids for s in self.chunking.sections]
        accepted: list[dict] = []
        seen = QuestionIndex()
        previous = None
        last: HierStep | None = None  # the part the step just before was accepted on (None: it failed)
        dead: set[tuple] = set()  # parts where a new question failed max_qa_attempts times
        for pos, step in enumerate(steps):
            part = step
            if step.follow_up and last is not None and last.chunk_ids != step.chunk_ids:
                # the step before moved on from a part that kept failing: the chain follows it there
                part = replace(step, section_id=last.section_id, chunk_ids=last.chunk_ids)
            # A follow-up of a failed step would be asked against an older QA than the one it is
            # recorded to follow: ask a new question on the same part instead.
            follow_up = step.follow_up and last is not None
            moves = _alternatives_when_needed(step, sections, steps)
            qa, tries, rounds = None, 0, 0
            if not follow_up and (part.level, part.chunk_ids) in dead:  # known to fail: no tries wasted
                part = self._move(part, moves, dead)
                self.result.failed_items.append({"kind": "hierarchical", "index": step.index, "level": step.level,
                                                 "replaced": True, "moved_to": self._where(part)})
            # Until accepted or out of budget (every later step keeps one generation in reserve).
            # After max_qa_attempts a follow-up becomes a new question on the same part; a new
            # question moves on to another chunk or section (walk.alternatives), at most
            # MAX_STEP_ROUNDS rounds in all, as a diverse slot moves on to a fresh draw.
            while qa is None and used < budget - (n - pos - 1):
                if tries == max_attempts:
                    rounds += 1
                    if rounds == MAX_STEP_ROUNDS:
                        break
                    if follow_up:
                        follow_up = False
                        moved = None
                    else:
                        dead.add((part.level, part.chunk_ids))
                        part = moved = self._move(part, moves, dead)
                    self.result.failed_items.append({
                        "kind": "hierarchical", "index": step.index, "level": step.level, "replaced": True,
                        "moved_to": None if moved is None else self._where(moved)})
                    tries = 0
                prompt, source, judge_source = self._step_prompt(part, follow_up, summaries, previous)
                outcome = await self._attempt("hierarchical", f"h{step.index}", rounds * max_attempts + tries,
                                              prompt, source, seen, step.level, judge_source)
                used, tries = used + 1, tries + 1
                qa = outcome if isinstance(outcome, dict) else None
            last = part if qa is not None else None
            if qa is None:
                self.result.failed_items.append({"kind": "hierarchical", "index": step.index,
                                                 "level": step.level, "replaced": False})
                continue
            seen.add(qa["question"], qa["answer"])
            previous = qa
            accepted.append({"index": len(accepted), "level": step.level, "section_id": part.section_id,
                             "chunk_ids": list(part.chunk_ids), "follow_up": follow_up,
                             "follows": len(accepted) - 1 if follow_up else None,
                             "walk_step": step.index, **qa})
        self.result.shortfall["hierarchical"] = n - len(accepted)
        self.result.qa_generations["hierarchical"] = used
        return accepted

    @staticmethod
    def _where(part: HierStep) -> dict:
        return {"section_id": part.section_id, "chunk_ids": list(part.chunk_ids)}

    @staticmethod
    def _move(part: HierStep, moves, dead: set[tuple]) -> HierStep:
        """The next alternative part not known to fail; a global step (or one out of
        alternatives) stays where it is, as a new question."""
        for alternative in moves:
            if (alternative.level, alternative.chunk_ids) not in dead:
                return alternative
        return replace(part, follow_up=False)

    # ------------------------------------------------------------------ diverse questions
    def _diverse_prompt(self, item: DiverseItem, summaries: dict | None) -> tuple[str, str, str]:
        """The item's prompt, the text its answer must be supported by and the judge's view of it."""
        texts = [self._chunk_text(c) for c in item.chunk_ids]
        if item.type == "hierarchical_aware":
            section_id = self.chunking.chunks[item.chunk_ids[0]].section_id
            section_summary, passage = summaries["sections"][section_id], self._passage(item.chunk_ids[0])
            return (self.prompts.render("question_hierarchical_aware", title=self.doc.title,
                                        global_summary=summaries["global"], section_number=section_id + 1,
                                        section_summary=section_summary, text=texts[0], passage=passage),
                    f"{summaries['global']}\n{section_summary}\n{texts[0]}",
                    f"{passage}\n\n{section_summary}\n\n{summaries['global']}")
        kind = self.prompts.diverse_type(item.type)
        # each passage as its own block, in document order: a multi-hop prompt opens with the
        # same block as every other prompt on its first chunk
        passages = "\n\n".join(self._passage(c) for c in item.chunk_ids)
        text = "\n\n".join(texts)
        return (self.prompts.render("question_diverse", title=self.doc.title, text=text, passages=passages,
                                    type_name=kind["name"], type_instruction=kind["instruction"]), text, passages)

    async def _diverse_attempt(self, item: DiverseItem, attempt: int, summaries: asyncio.Future) -> dict | str:
        prompt, source, judge_source = self._diverse_prompt(
            item, await summaries if item.type in SUMMARY_TYPES else None)
        return await self._attempt("diverse", f"d{item.index}", attempt, prompt, source, None, item.type,
                                   judge_source)

    async def diverse(self, draws: list[DiverseItem], n: int, hierarchical: asyncio.Future,
                      summaries: asyncio.Future) -> list[dict]:
        """``n`` diverse QA from ``draws`` (the first ``n``, then replacements in draw order)."""
        budget, used = math.ceil(self.p.qa_budget * n), 0
        slots = [[item, 0] for item in draws[:n]]  # per requested question: its current draw, attempts
        reserve = iter(draws[n:])
        accepted: dict[int, dict] = {}
        open_slots = list(range(len(slots)))
        seen: QuestionIndex | None = None
        while open_slots and used < budget:
            round_slots = open_slots[:budget - used]
            # sent in document order (first chunk, then slot), so the requests on one passage
            # reach the server together and find it in its prefix cache; outcomes are still
            # judged in slot order below
            send_order = sorted(range(len(round_slots)), key=lambda k: (slots[round_slots[k]][0].chunk_ids, k))
            sent = await asyncio.gather(*[self._diverse_attempt(slots[round_slots[k]][0], slots[round_slots[k]][1],
                                                                summaries) for k in send_order])
            outcomes: list = [None] * len(round_slots)
            for k, outcome in zip(send_order, sent):
                outcomes[k] = outcome
            used += len(round_slots)
            if seen is None:  # dedup against the walk's questions, then in slot order
                seen = QuestionIndex()
                for q in await hierarchical:
                    seen.add(q["question"], q["answer"])
            for i, outcome in zip(round_slots, outcomes):
                item = slots[i][0]
                slots[i][1] += 1
                if isinstance(outcome, dict) and seen.duplicates(outcome["question"], outcome["answer"]):
                    self._reject("diverse", f"d{item.index}", slots[i][1] - 1, "duplicate question", outcome,
                                 item.type)
                    outcome = "duplicate question"
                if isinstance(outcome, dict):
                    seen.add(outcome["question"], outcome["answer"])
                    accepted[i] = {"type": item.type, "chunk_ids": list(item.chunk_ids), "draw": item.index,
                                   **outcome}
                    open_slots.remove(i)
                elif slots[i][1] >= self.p.max_qa_attempts:
                    replacement = next(reserve, None)
                    self.result.failed_items.append({"kind": "diverse", "index": item.index, "type": item.type,
                                                     "replaced": replacement is not None})
                    if replacement is None:
                        open_slots.remove(i)
                    else:
                        slots[i] = [replacement, 0]
        self.result.shortfall["diverse"] = n - len(accepted)
        self.result.qa_generations["diverse"] = used
        return [{"index": k, **accepted[i]} for k, i in enumerate(sorted(accepted))]


async def generate_document(llm: LLMClient, prompts: Prompts, params: GenerateParams, doc: Document,
                            chunking: Chunking, on_request_done: Callable[[], None] = lambda: None
                            ) -> DocumentResult:
    """Summaries, hierarchical QA and diverse QA for one document, as a stage-1 record."""
    run = _DocumentRun(llm, prompts, params, doc, chunking, on_request_done)
    rng = random.Random(f"{params.seed}:{doc.id}")
    steps = plan_hierarchical(params.n_hierarchical, params.n_global_questions,
                              [s.chunk_ids for s in chunking.sections], params.follow_up_probability,
                              params.questions_per_section, rng, params.max_follow_ups)
    # the requested draws, then replacements: as many as the budget could ever try
    n_draws = params.n_diverse + math.ceil(params.qa_budget * params.n_diverse)
    # a seed of their own: a change of the walk (how many draws it takes) leaves the diverse draws as they are
    draws = plan_diverse(n_draws, len(chunking.chunks), params.diverse_types,
                         random.Random(f"{params.seed}:{doc.id}:diverse"),
                         (params.multi_hop_min_chunks, params.multi_hop_max_chunks))
    loop = asyncio.get_running_loop()
    summaries_done: asyncio.Future = loop.create_future()
    hierarchical_done: asyncio.Future = loop.create_future()
    diverse_task = asyncio.create_task(run.diverse(draws, params.n_diverse, hierarchical_done, summaries_done))
    try:
        summaries = await run.summaries()
        summaries_done.set_result(summaries)
        hierarchical = await run.hierarchical(steps, summaries)
    except BaseException as err:
        for future in (summaries_done, hierarchical_done):
            if not future.done():
                future.set_exception(err if isinstance(err, Exception) else asyncio.CancelledError())
                future.exception()  # retrieved here: the diverse task may never await it
        if not isinstance(err, BudgetExhausted):
            diverse_task.cancel()
        # at the cost cap (or SIGTERM) the diverse questions stop by themselves at their next
        # request: the one in flight is answered and cached, not thrown away after being paid for
        await asyncio.gather(diverse_task, return_exceptions=True)
        raise
    hierarchical_done.set_result(hierarchical)
    diverse = await diverse_task
    sections = [s.chunk_ids for s in chunking.sections]
    run.result.walk = {"planned": walk_summary(sections, [(s.level, s.section_id, s.chunk_ids, s.follow_up)
                                                          for s in steps]),
                       "kept": walk_summary(sections, [(q["level"], q["section_id"], q["chunk_ids"], q["follow_up"])
                                                       for q in hierarchical])}
    spans = chunking.spans()
    run.result.record = {
        "id": doc.id, "source": doc.source, "title": doc.title, "text": doc.text,
        "tokenizer": params.tokenizer, "n_tokens": chunking.n_tokens,
        "chunks": spans["chunks"], "sections": spans["sections"], "summaries": summaries,
        "hierarchical_qa": hierarchical, "diverse_qa": diverse,
    }
    return run.result


def _alternatives_when_needed(step: HierStep, sections: list[list[int]], steps: list[HierStep]):
    """``walk.alternatives``, computed at the step's first move (most steps never move)."""
    yield from alternatives(step, sections, steps)


def walk_summary(sections: list[list[int]], asked: list[tuple]) -> dict:
    """One document's walk (planned steps or kept QA) as (level, section_id, chunk_ids, follow_up):
    ``walk.coverage`` and the chunk-level follow-ups; stage.py averages it into the manifest."""
    return {**coverage(sections, [a[:3] for a in asked]),
            "follow_ups": sum(1 for level, _, _, follow_up in asked if level == "chunk" and follow_up)}


def expected_requests(params: GenerateParams, chunking: Chunking) -> int:
    """Requests a document needs when nothing is rejected (for the progress bar's total)."""
    qa = (params.n_hierarchical + params.n_diverse) * (2 if params.judge_qa else 1)
    return len(chunking.chunks) + len(chunking.sections) + 1 + qa
