"""Quality gates: what the tiny demo model really produces is rejected; good QA passes."""

from __future__ import annotations

from collections import Counter

import pytest

from longctx.generate.quality import (QuestionIndex, answer_support, content_stems, foreign_names, gate_of, qa_problem,
                                      summary_problem)

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
    ("She was the youngest of the two daughters of a most", "answer cut off"),  # no final mark, 11 words
    ("Her sister married and", "answer cut off"),  # short, but ends on a joining word
    ("Emma lived with:", "answer cut off"),
    ("Nearly twenty-o", "answer cut off"),  # cut mid-word: "o" is no word of the passage
    ("Twenty-one.", None),
    ("Nearly twenty-one", None),  # short, unpunctuated, ends on a word of the passage
    ("4", "answer names what the text does not"),  # a number the passage never gives
    ("Yes.", "answer too short"),
])
def test_cut_off_and_one_word_answers(answer, reason):
    assert qa_problem("How old is Emma at the start of the novel?", answer, QuestionIndex(), PASSAGE) == reason


@pytest.mark.parametrize("question, answer", [
    ("Who was the mistress of her father's house?", "Emma."),
    ("How old was Emma?", "Nearly twenty-one."),
    ("How many daughters did her father have?", "Two."),
    ("What kind of father did Emma have?", "Indulgent."),
])
def test_correct_one_word_answers_pass(question, answer):
    assert qa_problem(question, answer, QuestionIndex(), PASSAGE, 0.4, f"Emma\n{PASSAGE}") is None


@pytest.mark.parametrize("answer", [
    "The text does not say how old she is.", "It is unclear from the passage.",
    "This is not stated in the passage.", "I cannot determine this from the given text.",
    "There is no information about her age.", "I don't know.",
])
def test_non_answers(answer):
    assert qa_problem("How old was Emma?", answer, QuestionIndex()) == "non-answer"


def test_a_negative_answer_is_not_a_non_answer():
    assert qa_problem("Did Emma know what had caused the change?",
                      "No; she could not tell what she had done to merit it.", QuestionIndex()) is None
    assert qa_problem("What did Mr. Woodhouse say?", '"I do not know what you mean," he said.', QuestionIndex()) is None


@pytest.mark.parametrize("answer", [
    "Emma était la plus jeune des deux filles.", "Sie war die jüngere der beiden Töchter.",
    "Era la más joven de las dos hijas.", "Era la più giovane delle due figlie.",
])
def test_answers_in_another_language(answer):
    assert qa_problem("Which daughter was Emma?", answer, QuestionIndex()) == "other language"


@pytest.mark.parametrize("question, answer, reason", [
    ("Why does Emma decide to find a husband for Harriet?", "Emma decides to find a husband for Harriet.",
     "answer repeats the question"),
    ("What did Emma think of her father?", "Emma thought about her father.", "answer repeats the question"),
    ("Why had she come to Bath?", "She had come to Bath for a reason.", "answer repeats the question"),
    ("Emma was nearly twenty-one; how old was Emma?", "Nearly twenty-one.", "question gives away the answer"),
    ("Was Emma the elder or the younger daughter?", "The younger.", None),  # a choice question may be answered by its words
])
def test_restatements_and_leaks(question, answer, reason):
    assert qa_problem(question, answer, QuestionIndex()) == reason


def test_names_and_numbers_not_in_the_text():
    shown = f"Emma\n{PASSAGE}"
    assert foreign_names("She married Mr. Knightley in 1815.", shown) == ["Knightley", "1815"]
    assert foreign_names("Emma Woodhouse, nearly twenty-one, lived with her father.", shown) == []
    assert qa_problem("Whom did Emma's sister marry?", "She married Mr. John Knightley.", QuestionIndex(), PASSAGE,
                      0.4, shown) == "answer names what the text does not"
    assert qa_problem("Why does Elizabeth refuse Mr. Collins?", "Because she does not love him.", QuestionIndex(),
                      PASSAGE, 0.4, shown) == "question names what the text does not"
    # the names are checked against what the generator was shown, which may be more than the source
    assert qa_problem("Whom did Emma's sister marry?", "She married Mr. John Knightley.", QuestionIndex(), PASSAGE,
                      0.0, shown + "\nIsabella married John Knightley.") is None


def test_gates_group_reasons():
    assert gate_of("answer cut off") == "cut-off"
    assert gate_of("judge: answer not supported") == "judge"
    assert gate_of("llm call failed: timeout") == "request"
    assert gate_of("duplicate question") == "duplicate"


@pytest.mark.parametrize("answer, supported", [
    ("Emma had lived nearly twenty-one years with very little to vex her.", True),
    ("She became mistress of her father's house after her sister's marriage.", True),
    ("Her indulgent father married her sister.", True),  # every word is in the passage: lexical, not logic
    ("Emma is a poor governess who travels to London with Mr. Knightley.", False),
    ("She was a poor governess who travelled with a captain at sea.", False),  # no name: the support check
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


# ---------------------------------------------------------------- the planted set (issue 19 §1)
def test_planted_set_is_real_austen_and_large_enough():
    """>= 100 bad and >= 100 good pairs; every passage is a paragraph of the novel it names."""
    import re
    from pathlib import Path

    from fixtures.planted_qa import load_planted

    planted = load_planted()
    categories = Counter(item["category"] for item in planted["items"])
    assert categories["good"] >= 100 and sum(categories.values()) - categories["good"] >= 100
    assert set(categories) == {"good", "cut_off", "restatement", "non_answer", "leak", "unsupported",
                               "paraphrase_duplicate", "other_language", "other_document"}
    books = Path(__file__).resolve().parents[1] / "data" / "austen"
    if not books.is_dir():
        pytest.skip("data/austen is made by ./dev setup")
    for pid, passage in planted["passages"].items():
        novel = re.sub(r"\s+", " ", (books / f"{passage['book']}.txt").read_text(encoding="utf-8"))
        assert passage["text"] in novel, pid


def test_planted_set_meets_the_goals():
    """Issue 19: >= 90 % of planted bad QA caught, <= 5 % of good QA rejected; no kind of bad QA
    slips through wholesale; correct one- and two-word answers pass."""
    from fixtures.planted_qa import rates, screen_planted

    screened = screen_planted()
    table = rates(screened)
    assert table["all bad"]["rate"] >= 0.90, {c: r["rate"] for c, r in table.items()}
    assert table["good"]["rate"] <= 0.05, [(i["question"], i["reason"]) for i in screened
                                           if i["category"] == "good" and i["reason"]]
    for category, row in table.items():
        if category not in ("good", "all bad"):
            assert row["rate"] >= 0.75, (category, row)
    short = [i for i in screened if i["category"] == "good" and len(i["answer"].split()) <= 2]
    assert len(short) >= 15 and all(i["reason"] is None for i in short), [i for i in short if i["reason"]]


def test_paraphrases_by_the_answer_they_share():
    seen = QuestionIndex()
    seen.add("Who called soon after breakfast the following morning?", "Miss Lucas.")
    assert seen.duplicates("Who came to visit soon after breakfast the next morning?", "Miss Lucas.")
    assert not seen.duplicates("Who came to visit soon after breakfast the next morning?", "Mr. Collins.")
    assert not seen.duplicates("Who came to visit soon after breakfast the next morning?")  # no answer: words only


def test_quoted_names_are_known():
    text = "\"I remember once calling you 'George,' in one of my amiable fits,\" said Emma; Lovers' Vows was read."
    assert foreign_names("Emma once called him George while they read Lovers' Vows.", text) == []
