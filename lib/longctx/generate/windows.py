"""Long books as windows: a document longer than a stage-2 slot becomes several documents.

Why (issue 19 §4). Stage 2 fills a sample with *whole* documents: a global question is grounded
on every chunk of its document, so any cut loses it (and most section questions). A paper stage
with ``docs_per_sample`` documents gives each about ``target / docs_per_sample`` tokens (350K / 4
= 89.6K, 650K / 8 = 83.2K, 1M / 12 = 87.4K); a book longer than that can only be placed cut. On a
corpus with a 250K-token median, 31 % of global questions survived the 180K stage.

Design. Stage 1 splits such a book into consecutive *windows* cut at chunk boundaries (paragraph
or sentence ends, never inside one), and generates the hierarchy for each window as for a document
of its own: the window is chunked again into its own chunks and sections, gets its own summaries
(its "global" summary covers the window) and QA. So every question, global ones included, is
grounded on text a sample holds whole. A window record has the id ``<book id>#w<k>`` and says where
it came from (``window``: docs/CONTRACTS.md); stage 2 places it like any document.
Alternatives we did not take: cutting books to ``max_document_tokens`` throws away most of every
long book; a book-level global summary over all windows would ground global questions on text a
sample does not hold; overlapping windows would put the same text twice in one sample.

Cutting is greedy: each window takes as many whole chunks as fit ``max_window_tokens``, the last
one holds the rest. Chunk (~4K), not section (~12K) boundaries: a window forms its own sections,
so the parent's buy nothing, and a 12K grid leaves full windows up to 12K short of the cap, while
the 4-document 350K stage needs documents within ~5K of its 89.6K slot (with 12,288-token
sections, full windows stop at 6 x 12,288 = 73,728 tokens: four of them with their QA make ~315K,
short of the stage's 340K fill floor). Full windows near the cap fill the 350K stage; the shorter
last windows give the 8- and 12-document stages the mix they need. The default cap comes from the paper's stage-2 slots
(:func:`window_tokens_for_slots`); ``bench/bench_concat_keep.py`` measures what it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.tokenizer import Tokenizer
from .chunking import Chunking, chunk_document
from .corpus import Document

__all__ = ["Window", "window_bounds", "split_windows", "window_tokens_for_slots", "PAPER_STAGE_SLOTS",
           "QA_TOKENS_PER_DOCUMENT", "DEFAULT_WINDOW_TOKENS"]

# (target_tokens, docs_per_sample) of params/paper/02_concatenate.yaml's stages (a test checks they
# agree); None = documents until full (the 180K stage), which any window fits.
PAPER_STAGE_SLOTS = ((184_320, None), (358_400, 4), (665_600, 8), (1_048_576, 12))

# Tokens a whole document adds to a sample besides its text: header, separator, its 25
# hierarchical QA turns, 9 diverse and 3 revisit turns (about 130 tokens a turn with a 72B
# generator's question and answer lengths: 4.6-5.4K as the planner costs the synthetic books of
# bench/bench_concat_keep.py; tests/test_windows.py checks the allowance against it).
QA_TOKENS_PER_DOCUMENT = 5_000


def window_tokens_for_slots(slots=PAPER_STAGE_SLOTS, qa_tokens: int = QA_TOKENS_PER_DOCUMENT) -> int:
    """Largest window text (tokens) whose whole document still fits the largest per-document slot
    of a multi-document stage: ``max(target / docs_per_sample) - qa_tokens``, rounded down to 1K.

    The largest slot, not the smallest: a window placed with shorter ones fits a smaller slot too
    (8 documents share 650K), while a cap below the 350K stage's 89.6K slot would leave no four
    documents that fill it."""
    per_doc = [target / n for target, n in slots if n]
    if not per_doc:
        raise ValueError("no stage with docs_per_sample: every stage fills with whole documents of any length")
    return int((max(per_doc) - qa_tokens) // 1024 * 1024)


DEFAULT_WINDOW_TOKENS = window_tokens_for_slots()  # 83,968 for the paper's stages


@dataclass(frozen=True)
class Window:
    """One window of a document: a run of whole chunks of the parent chunking."""

    index: int
    count: int
    first_chunk: int   # chunks [first_chunk, end_chunk) of the parent chunking
    end_chunk: int
    token_start: int   # in the parent's tokenisation
    token_end: int
    char_start: int    # in the parent's text
    char_end: int

    def as_record(self, parent_id: str, parent_tokens: int) -> dict:
        """The record's ``window`` field (docs/CONTRACTS.md)."""
        return {"index": self.index, "count": self.count, "parent": parent_id,
                "parent_n_tokens": parent_tokens, "parent_token_start": self.token_start,
                "parent_token_end": self.token_end, "parent_char_start": self.char_start,
                "parent_char_end": self.char_end}


def window_bounds(spans: list[tuple[int, int]], max_tokens: int) -> list[tuple[int, int]]:
    """Greedy ``[first, end)`` ranges of consecutive ``(token_start, token_end)`` spans (a
    document's chunks), each range covering at most ``max_tokens`` tokens. A single span longer
    than ``max_tokens`` is an error (``GenerateParams.check`` keeps windows >= sections >= chunks)."""
    out: list[tuple[int, int]] = []
    first = 0
    for i, (start, end) in enumerate(spans):
        if end - start > max_tokens:
            raise ValueError(f"span {i} covers {end - start} tokens, more than a window of {max_tokens}")
        if end - spans[first][0] > max_tokens:
            out.append((first, i))
            first = i
    if spans:
        out.append((first, len(spans)))
    return out


def split_windows(doc: Document, chunking: Chunking, max_tokens: int, tokenizer: Tokenizer,
                  small_chunk_tokens: int, medium_chunk_tokens: int
                  ) -> list[tuple[Document, Chunking, Window | None]]:
    """``doc`` as windows of at most ``max_tokens`` (``[(doc, chunking, None)]`` when it fits or
    ``max_tokens`` is 0). Each window is chunked again on its own text, so its chunk and section
    spans index the window's tokens, as stage 2 expects of any document."""
    if not max_tokens or chunking.n_tokens <= max_tokens:
        return [(doc, chunking, None)]
    chunks = chunking.chunks
    bounds = window_bounds([(c.token_start, c.token_end) for c in chunks], max_tokens)
    out = []
    for k, (first, end) in enumerate(bounds):
        a, b = chunks[first], chunks[end - 1]
        # the last window runs to the text's end (trailing whitespace after the last token)
        char_end = len(doc.text) if end == len(chunks) else b.char_end
        window = Window(k, len(bounds), first, end, a.token_start, b.token_end, a.char_start, char_end)
        text = doc.text[a.char_start:char_end]
        wdoc = Document(f"{doc.id}#w{k}", f"{doc.title} (part {k + 1} of {len(bounds)})", doc.source, text)
        out.append((wdoc, chunk_document(text, tokenizer, small_chunk_tokens, medium_chunk_tokens), window))
    return out
