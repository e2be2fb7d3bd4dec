"""Piecewise assembly vs the plain approach (render the chat as text, encode it with the Hugging
Face fast tokenizer): identical ids except at listed segment joins, each bounded.

The only joins that can differ are where a document's kept text ends without a blank line and
the "\\n\\n" separator follows (the whole text merges e.g. ".\\n" + "\\n\\n" into ".\\n\\n\\n"), or
where a document starts with whitespace. Bound: at most one differing region per document, each
straddling a piece boundary and at most 3 tokens on either side, and at most 1 token of length
difference per region.
"""

import pytest
from fixtures.austen_qa import write_austen_qa

from longctx.concat.stage import ConcatConfig, Concatenator, StageSpec
from longctx.concat.token_joins import diff_regions, regions_at_joins, token_byte_lengths

MAX_REGION_TOKENS = 3


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    pytest.importorskip("transformers")
    from longctx.core.fast_tokenizer import llama3_fast_tokenizer
    return llama3_fast_tokenizer()


@pytest.mark.parametrize("layout", ["interleaved", "documents_first"])
def test_assembled_ids_equal_plain_encoding_except_at_listed_joins(fast, tmp_path, layout):
    qa = write_austen_qa(tmp_path / "qa.jsonl", chunk_tokens=384)
    cfg = ConcatConfig(qa_path=str(qa), layout=layout, seed=7,
                       stages=[StageSpec("a", 8192, 6, 2), StageSpec("b", 16384, 6, 4), StageSpec("c", 12000, 4, None)])
    concat = Concatenator(cfg)
    lengths = token_byte_lengths(concat.store.tokenizer)
    n_regions = n_docs = n_identical = 0
    for spec in cfg.stages:
        for plan in concat.plans(spec):
            turns = concat.layout.turns(plan, with_text=True)
            ours = concat.layout.chat.encode(turns)
            plain = fast(concat.layout.chat.render_text(turns), add_special_tokens=False)["input_ids"]
            regions = diff_regions(ours.input_ids, plain, lengths)
            assert all(regions_at_joins(regions, ours.piece_starts)), regions
            assert all(r.size <= MAX_REGION_TOKENS for r in regions), regions
            assert all(abs((r.ours[1] - r.ours[0]) - (r.theirs[1] - r.theirs[0])) <= 1 for r in regions)
            assert len(regions) <= len(plan.documents)
            assert abs(len(ours.input_ids) - len(plain)) <= len(regions)
            # the answers are never part of a differing region
            for s, e in zip(ours.label_starts, ours.label_ends):
                assert not any(r.ours[0] < e and s < r.ours[1] for r in regions)
            n_regions += len(regions)
            n_docs += len(plan.documents)
            n_identical += not regions
    assert n_identical > 0 and 0 < n_regions < n_docs  # the bound is exercised; most joins are clean


def test_diff_regions_finds_a_planted_difference(fast):
    from longctx.core.tokenizer import load_tokenizer
    tok = load_tokenizer()
    lengths = token_byte_lengths(tok)
    a = tok.encode("It ended.") + tok.encode("\n\nNext") + tok.encode(" words here")
    b = tok.encode("It ended.\n\nNext words here")
    regions = diff_regions(a, b, lengths)
    assert len(regions) == 1 and regions[0].size == 2
    assert regions_at_joins(regions, [0, len(tok.encode("It ended."))]) == [True]
    assert diff_regions(b, b, lengths) == []
    with pytest.raises(ValueError, match="different byte counts"):
        diff_regions(a, b[:-1], lengths)
