"""Quality gates: what the tiny demo model really produces is rejected; good QA passes."""

from __future__ import annotations

import pytest

from longctx.generate.quality import QuestionIndex, answer_support, content_stems, qa_problem, summary_problem

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


# ---------------------------------------------------------------- planted bad QA (issue 8 §4)
PASSAGE = ("Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, "
           "seemed to unite some of the best blessings of existence; and had lived nearly twenty-one years "
           "in the world with very little to distress or vex her. She was the youngest of the two daughters "
           "of a most affectionate, indulgent father; and had, in consequence of her sister's marriage, been "
           "mistress of his house from a very early period.")


@pytest.mark.parametrize("answer, reason", [
    ("4,", "answer cut off"),
    ("She was the youngest of the two daughters of a most", None),  # cut mid-phrase but no mark: kept
    ("Her sister married and", None),
    ("Emma lived with:", "answer cut off"),
    ("Twenty-one.", None),
    ("4", "answer too short"),
    ("Yes.", "answer too short"),
])
def test_cut_off_and_one_word_answers(answer, reason):
    assert qa_problem("How old is Emma at the start of the novel?", answer, QuestionIndex()) == reason


@pytest.mark.parametrize("answer, supported", [
    ("Emma had lived nearly twenty-one years with very little to vex her.", True),
    ("She became mistress of her father's house after her sister's marriage.", True),
    ("Her indulgent father married her sister.", True),  # every word is in the passage: lexical, not logic
    ("Emma is a poor governess who travels to London with Mr. Knightley.", False),
    ("The captain sails to Bombay and fights pirates at sea.", False),
])
def test_support_check_on_planted_answers(answer, supported):
    reason = qa_problem("What does the opening say about Emma's life?", answer, QuestionIndex(), PASSAGE, 0.5)
    assert (reason is None) == supported, (answer, reason, answer_support(answer, PASSAGE))
    assert qa_problem("What does the opening say about Emma's life?", answer, QuestionIndex()) is None  # no source: no check


@pytest.mark.parametrize("paraphrase", [
    "What makes Emma decide to find Harriet Smith a husband?",
    "Why did Emma decide to look for a husband for Harriet Smith?",
    "Why does Emma decide to find Harriet Smith a husband in the first chapters?",
    "For what reason does Emma decide to find a husband for Harriet Smith?",
])
def test_paraphrased_duplicates(paraphrase):
    assert QuestionIndex([GOOD_Q]).duplicates(paraphrase)


@pytest.mark.parametrize("different", [
    "When does Emma first meet Harriet Smith?",
    "Who is Harriet Smith's first suitor?",
    "Why does Mr. Knightley disapprove of Emma's plans for Harriet?",
    "How does Harriet respond to Mr. Martin's proposal?",
])
def test_different_questions_about_the_same_people_are_not_duplicates(different):
    assert not QuestionIndex([GOOD_Q]).duplicates(different)


def test_stems_meet_across_inflections():
    assert content_stems("married marries marry") == {"marry"}
    assert content_stems("Why did she visit?", keep_question_words=True) == {"why", "visit"}
    assert answer_support("the the of", PASSAGE) == 1.0  # no content word: nothing to check


def test_fixture_qa_pass_the_support_check(tmp_path):
    """The stage-2 fixture's answers quote their grounding chunks: all supported."""
    import json

    from fixtures.austen_qa import write_austen_qa

    path = write_austen_qa(tmp_path / "qa.jsonl")
    checked = 0
    for line in path.read_text().splitlines():
        record = json.loads(line)
        chunk = [record["text"][c["char_start"]:c["char_end"]] for c in record["chunks"]]
        for qa in record["hierarchical_qa"] + record["diverse_qa"]:
            source = "\n".join(chunk[c] for c in qa["chunk_ids"])
            assert answer_support(qa["answer"], source) == 1.0
            checked += 1
    assert checked == 6 * 75
