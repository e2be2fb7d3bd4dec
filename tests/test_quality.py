"""Quality gates: what the tiny demo model really produces is rejected; good QA passes."""

from __future__ import annotations

import pytest

from longctx.quality import QuestionIndex, qa_problem, summary_problem

GOOD_Q = "Why does Emma decide to find a husband for Harriet Smith?"
GOOD_A = "She believes Harriet deserves a gentleman and enjoys the project of improving her."


def test_good_pair_passes():
    assert qa_problem(GOOD_Q, GOOD_A, QuestionIndex()) is None
    assert qa_problem("Describe Mr. Woodhouse's attitude to marriage.", "He dislikes any change.", QuestionIndex()) is None


@pytest.mark.parametrize("question, answer, reason", [
    ("", GOOD_A, "empty question"),
    (GOOD_Q, "  ", "empty answer"),
    ("What is the answer to the question?", "The answer.", "placeholder text"),
    (GOOD_Q, "What is the answer to the question", "placeholder text"),
    ("...?", "...", "placeholder text"),
    (GOOD_Q, "N/A", "placeholder text"),
    ("Emma is rich.", "Yes she is rich and clever.", "not a question"),
    ("What does the text say,", "It says Emma is rich.", "not a question"),  # cut off by the generator
    ("Who?", "Emma.", "question too short"),
    ("Who is Emma Woodhouse?", "Who is Emma Woodhouse?", "answer repeats the question"),
    (GOOD_Q, "the the the the the the the the the the the the the the", "degenerate repetition"),
    (None, GOOD_A, "schema: question and answer must be strings"),
])
def test_rejects(question, answer, reason):
    assert qa_problem(question, answer, QuestionIndex()) == reason


def test_duplicates_within_a_document():
    seen = QuestionIndex([GOOD_Q])
    assert qa_problem("why does EMMA decide to find a husband for Harriet Smith ?", GOOD_A, seen) == "duplicate question"
    assert qa_problem("Why does Emma decide to find a husband for Harriet Smith, then?", GOOD_A, seen) == "duplicate question"
    assert qa_problem("Who is Harriet Smith's father?", "Nobody knows at first.", seen) is None


def test_summary_gate():
    assert summary_problem("Emma Woodhouse lives with her father at Hartfield and plans a match.") is None
    assert summary_problem("Short one.") == "summary too short"
    assert summary_problem(42) == "schema: summary must be a string"
    assert summary_problem("Insert answer here, your answer here, nothing more to say.") == "placeholder text"
