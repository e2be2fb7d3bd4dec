"""Quality gates applied to every generated QA pair and summary.

Each gate returns ``None`` (accept) or a short reason string (reject); the pipeline regenerates
a rejected item with a new seed within its budget and keeps rejects apart, with reasons
(:data:`GATES` groups the reasons for the manifest). The placeholder list comes from what small
generators actually produce (SmolLM2-135M often writes "What is the answer to the question" or
echoes the JSON example). ``tests/fixtures/planted_qa.json`` holds the planted set the gates are
measured on (bad QA of eight kinds and good QA written from real Austen passages;
``bench/bench_quality_gates.py`` gives the catch and false-reject rates per kind).

Words are compared as *content stems*: lower-cased words without function words, cut by a few
English suffix rules and a table of irregular verbs (:func:`content_stems`). Hand-written on
purpose: the comparison needs only that "married", "marries" and "marry" (or "thought" and
"think") meet, not a linguist's lemma, and it must be deterministic and instant.

* Non-answers ("the text does not say") and answers in another language (two or more function
  words of French, German, Spanish or Italian outnumbering English ones: statistical language
  identifiers are unreliable on answers of a few words, a function-word count is not).
* Cut-off answers: one ending on a comma, colon or an opening bracket, or a longer answer with no
  final punctuation, or a short one whose last word is not a word of the text shown.
* Restatements and leaks: an answer that adds no content stem to its question (vague words such
  as "something" or "a reason" do not count) repeats it; when the answer's words stand in the
  question, the question gives it away. A choice question ("X or Y?") may be answered by a word
  it offers.
* Names and numbers (:func:`foreign_names`): a capitalised name or a number in the answer that
  the generator was not shown (a wrong fact that shares the passage's other words), or a name in
  the question that it was not shown (a question about another document).
* Support (:func:`answer_support`): the share of the answer's content stems found in the text the
  generator was shown (the passage, or the summaries a section or global question is asked
  from). An answer that invents most of its words scores low. It is a lexical screen, not a
  proof; the optional judge pass (``judge_qa``) asks the generator itself.
* Near-duplicates (:class:`QuestionIndex`): two questions are duplicates when their stem sets,
  question words kept and canonicalised ("what makes", "for what reason" -> "why"), overlap by
  Jaccard >= 0.7, one holds >= 80 % of the other's stems, or rapidfuzz's token-set ratio of the
  two stem strings is >= 85 (a paraphrase that reorders, drops or adds a few words).
"""

from __future__ import annotations

import re
from typing import Iterable

from rapidfuzz import fuzz

__all__ = ["qa_problem", "summary_problem", "normalise", "content_stems", "answer_support", "foreign_names",
           "QuestionIndex", "GATES", "gate_of"]

# A question ends with "?"; without one only an instruction counts ("Describe ...", "Explain ...").
# "What does the text say," is a cut-off question, not a question.
_IMPERATIVE = re.compile(r"^(describe|explain|name|list|compare|identify|summari[sz]e|discuss|trace)\b",
                         re.IGNORECASE)
_PLACEHOLDERS = re.compile(
    r"(what is the answer to the question|answer to the question|the answer is the answer|"
    r"your (question|answer)( here)?|^\.\.\.$|^\?$|lorem ipsum|<answer>|<question>|\[answer\]|"
    r"\[question\]|^n/?a$|^none$|^unknown$|^answer$|^question\??$|insert (question|answer)|"
    r"^\.\.\.\?$|^summary$|^\.\.\.$)", re.IGNORECASE)
# "The text does not say", "It is unclear from the passage", "I cannot determine this": an
# answer that declines to answer teaches the model to decline.
_NON_ANSWER = re.compile(
    r"\b(?:(?:text|passage|source|excerpt|story|context|summary|summaries|document|it)\s+"
    r"(?:does\s*n[o']t|do\s*n[o']t|did\s*n[o']t|doesn't)\s+(?:say|state|specify|mention|tell|reveal|"
    r"explain|give|provide|indicate|describe|make)|"
    r"(?:is|are|was|were)\s+(?:not|never)\s+(?:stated|specified|mentioned|given|provided|said|described|"
    r"explained|clear|known|revealed|indicated)|"
    r"(?:is|it's|it\s+is)\s+(?:unclear|not\s+clear)|"
    r"\bno\s+(?:information|mention|answer|indication|details?)\b|"
    r"\b(?:i|we|one|it|this)\s+(?:cannot|can't|can\s+not|could\s*n[o']t|am\s+unable\s+to|is\s+impossible\s+to)"
    r"\s+(?:be\s+)?(?:determine|determined|tell|answer|say|know|find|infer|inferred)|"
    r"^\s*i\s+(?:do\s*n[o']t|don't)\s+know\b|\bnot\s+(?:enough|sufficient)\s+information\b|"
    r"\bunknown\s+from\b)", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9']+")
_LETTERS = re.compile(r"[^\W\d_]+", re.UNICODE)   # words of any script (the language gate)
_NAME = re.compile(r"\b[A-Z][a-z]+(?:'s)?\b")
_NUMBER_WORDS = frozenset("""two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand million
third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth""".split())
# An answer that stops on a comma, colon, dash or an opening bracket was cut off ("4,").
_CUT_OFF = re.compile(r"[,;:(\[{\-–—“]$")
_FINAL = re.compile(r"""[.!?…"'”’)\]*_]$""")
# A short answer without final punctuation that ends on one of these stopped mid-phrase ("Her sister married and").
_JOINING_WORDS = frozenset("""and or but nor the a an of to in on at by for with from into that which who whose as than
if because when while his her their its my your our""".split())
_QUESTION_WORDS = frozenset("what when where which who whom whose why how".split())
# Openers that ask "why" or "how" in other words, so paraphrases meet ("what made X do Y" ~ "why did X do Y").
_QUESTION_OPENERS = [(re.compile(p, re.IGNORECASE), r) for p, r in [
    (r"^\s*(what|which)\s+(made|makes|make|caused|causes|cause|led|leads|lead|prompted|prompts|drove|drives)\b",
     "why did"),
    (r"^\s*for\s+what\s+reasons?\b", "why"), (r"^\s*what\s+was\s+the\s+reason\b", "why"),
    (r"^\s*in\s+what\s+(way|manner)\b", "how"), (r"^\s*to\s+whom\b", "who"), (r"^\s*whom\b", "who"),
    (r"^\s*with\s+whom\b", "who with"), (r"^\s*what\s+(person|man|woman|character)\b", "who"),
    (r"^\s*(which|what)\s+(place|town|county|city)\b", "where")]]
_FUNCTION_WORDS = frozenset("""
a an the and or but nor so yet if then than as of to in on at by for from with without into onto upon
about above after before between during through over under again further once
is am are was were be been being do does did doing done have has had having will would shall should
can could may might must it its it's this that these those there here i me my we us our you your he
him his she her they them their one ones not no yes also very just only too any some all each every
such own same other more most much many what when where which who whom whose why how
""".split())
# Words that answer nothing: "She had come to Bath for a reason", "Thorpe gave a description".
_VAGUE = frozenset("""reason reasons something someone somebody somewhere somehow thing things way ways matter
certain particular description describe feeling feelings news information answer question detail details fact
give gave given make made get got take took""".split())
_TITLES = frozenset("mr mrs ms miss dr st sir lady lord captain colonel general admiral".split())
# Function words of the languages a multilingual generator most often slips into; words that
# are also English ("a", "in", "die", "son", "fin") are left out.
_FOREIGN_FUNCTION_WORDS = frozenset("""
le la les des est et une du dans pour pas que qui il elle ils elles sur au aux sa ses était avec ce cette lui
leur être sont été avait
der das und ist ein eine einen einem nicht er sie es zu mit dem den des auf war hatte nach von sich im ich wir
ihr sein seine seinem seiner auch wie
el los las y en un una es por con para su sus era eran estaba del al lo muy pero
il lo di che della delle del degli sua suo sono non per sarebbe stata stato anche nella
""".split())
_SUFFIXES = ("'s", "ingly", "edly", "ing", "ed", "ies", "es", "s", "ly")
# Irregular forms the suffix rules cannot meet ("thought" ~ "think").
_IRREGULAR = {w: base for base, forms in {
    "think": "thought", "feel": "felt", "go": "went gone", "come": "came", "give": "gave given",
    "make": "made", "say": "said", "tell": "told", "see": "saw seen", "take": "took taken",
    "know": "knew known", "find": "found", "leave": "left", "choose": "chose chosen",
    "bring": "brought", "mean": "meant", "keep": "kept", "hear": "heard", "become": "became",
    "begin": "began begun", "speak": "spoke spoken", "write": "wrote written", "send": "sent",
    "meet": "met", "fall": "fell fallen", "stand": "stood", "sit": "sat", "run": "ran",
    "lose": "lost", "pay": "paid", "hold": "held", "lead": "led", "get": "got gotten",
    "buy": "bought", "teach": "taught", "catch": "caught", "seek": "sought", "fight": "fought",
    "break": "broke broken", "wear": "wore worn", "forget": "forgot forgotten", "rise": "rose risen",
    "drive": "drove driven", "ride": "rode ridden", "eat": "ate eaten", "grow": "grew grown",
    "throw": "threw thrown", "fly": "flew flown", "draw": "drew drawn", "win": "won",
    "sell": "sold", "spend": "spent", "build": "built", "understand": "understood", "marry": "married",
}.items() for w in forms.split()}

# Reason -> gate, for the manifest's rejections by gate (reasons not listed are their own gate).
GATES = {
    "schema: question and answer must be strings": "schema", "schema: summary must be a string": "schema",
    "empty question": "form", "empty answer": "form", "question too short": "form", "not a question": "form",
    "answer too short": "form", "summary too short": "form",
    "placeholder text": "placeholder", "degenerate repetition": "repetition",
    "non-answer": "non-answer", "answer cut off": "cut-off", "other language": "language",
    "answer repeats the question": "restatement", "question gives away the answer": "restatement",
    "answer names what the text does not": "names and numbers",
    "question names what the text does not": "names and numbers",
    "answer not supported by the passage": "support", "duplicate question": "duplicate",
}


def gate_of(reason: str) -> str:
    """The gate a reject reason belongs to ("judge: ..." -> judge, "llm call failed: ..." -> request)."""
    if reason.startswith("judge"):
        return "judge"
    if reason.startswith("llm call failed"):
        return "request"
    return GATES.get(reason.split(" (")[0], reason)


def normalise(text: str) -> str:
    """Lower-case words only: the form exact-duplicate detection compares."""
    return " ".join(_WORD.findall(text.lower()))


def _stem(word: str) -> str:
    word = _IRREGULAR.get(word, word)
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)] + ("y" if suffix == "ies" else "")
            break
    word = word[:-1] + "y" if word.endswith("i") else word  # marri(ed) -> marry
    return word[:-1] if word.endswith("e") and len(word) > 4 else word  # decide(s) -> decid


_VAGUE_STEMS = frozenset(_stem(w) for w in _VAGUE)


def content_stems(text: str, keep_question_words: bool = False) -> frozenset[str]:
    """Stems of the words that carry content (see the module docstring)."""
    words = _WORD.findall(text.lower())
    return frozenset(_stem(w) for w in words
                     if w not in _FUNCTION_WORDS or (keep_question_words and w in _QUESTION_WORDS))


def answer_support(answer: str, source: str) -> float:
    """Share of the answer's content stems that occur in ``source`` (1.0 for an answer without any)."""
    stems = content_stems(answer)
    if not stems:
        return 1.0
    return len(stems & content_stems(source)) / len(stems)


def _known_words(text: str) -> frozenset[str]:
    words = [w.strip("'") for w in _WORD.findall(text.lower())]  # 'George,' and Lovers' Vows quote their words
    return frozenset(words) | frozenset(w[:-2] for w in words if w.endswith("'s"))


def foreign_names(text: str, known: str) -> list[str]:
    """Names (capitalised words past a sentence's first word) and numbers in ``text`` that do not
    occur in ``known``: what the text asserts that its source never mentioned."""
    known_words = _known_words(known)
    out = []
    text = re.sub(r"\b(Mr|Mrs|Ms|Dr|St)\.", r"\1", text.strip())  # "Mr." ends no sentence
    for sentence in re.split(r"(?<=[.!?;:])\s+|\s+--\s*|\n", text):
        for i, match in enumerate(_NAME.finditer(sentence)):
            word = match.group().lower().removesuffix("'s")
            first = match.start() == len(sentence) - len(sentence.lstrip(" \"'“‘(")) and i == 0
            if not first and word not in known_words and word not in _FUNCTION_WORDS and word not in _TITLES:
                out.append(match.group())
        for word in _WORD.findall(sentence.lower()):
            if (word.isdigit() or word in _NUMBER_WORDS) and word not in known_words:
                out.append(word)
    return out


def _other_language(text: str) -> bool:
    words = [w.lower() for w in _LETTERS.findall(text)]
    foreign = sum(w in _FOREIGN_FUNCTION_WORDS for w in words)
    english = sum(w in _FUNCTION_WORDS for w in words)
    return foreign >= 2 and foreign > english


def _degenerate(text: str) -> bool:
    """Long text made of a few words repeated (a looping generator)."""
    words = _WORD.findall(text.lower())
    if len(words) < 12:
        return False
    return len(set(words)) / len(words) < 0.3


def _question_key(question: str) -> str:
    q = question
    for pattern, replacement in _QUESTION_OPENERS:
        q = pattern.sub(replacement, q, count=1)
    return q


_SHORT_ANSWER_STEMS = 12  # answers compared by the answer rule: a fact, a name, a phrase


class QuestionIndex:
    """The QA accepted so far in one document, for duplicate detection (see the module docstring).

    Paraphrases that swap words for synonyms ("Who called ...?" / "Who came to visit ...?") share
    few stems; what gives them away is the answer: two questions that overlap by
    ``answer_jaccard`` and are answered alike (short answers, rapidfuzz's token-sort ratio of
    their stems >= ``answer_similarity``) ask the same thing.
    """

    def __init__(self, questions: Iterable[str] = (), jaccard_threshold: float = 0.7,
                 containment_threshold: float = 0.8, fuzzy_threshold: float = 88.0,
                 answer_jaccard: float = 0.35, answer_similarity: float = 85.0):
        self.jaccard, self.containment, self.fuzzy = jaccard_threshold, containment_threshold, fuzzy_threshold
        self.answer_jaccard, self.answer_similarity = answer_jaccard, answer_similarity
        self._items: list[tuple[str, frozenset[str], str, str | None]] = []
        for q in questions:
            self.add(q)

    def __len__(self) -> int:
        return len(self._items)

    @staticmethod
    def _key(question: str, answer: str | None) -> tuple[str, frozenset[str], str, str | None]:
        stems = content_stems(_question_key(question), keep_question_words=True)
        answer_stems = content_stems(answer) if answer else frozenset()
        # a long answer shares many words with any other long answer about the same text
        answer_key = " ".join(sorted(answer_stems)) if 0 < len(answer_stems) <= _SHORT_ANSWER_STEMS else None
        return normalise(question), stems, " ".join(sorted(stems)), answer_key

    def add(self, question: str, answer: str | None = None) -> None:
        self._items.append(self._key(question, answer))

    def duplicates(self, question: str, answer: str | None = None) -> bool:
        norm, stems, joined, answer_key = self._key(question, answer)
        for other_norm, other, other_joined, other_answer in self._items:
            if norm == other_norm:
                return True
            shared = len(stems & other)
            if not shared:
                continue
            jaccard = shared / len(stems | other)
            if jaccard >= self.jaccard:
                return True
            smaller = min(len(stems), len(other))
            if smaller >= 3 and shared / smaller >= self.containment:
                return True
            # rapidfuzz compares the stems as strings: stems that differ by a letter or two
            # ("visit" / "visitor") still count, which set overlap misses.
            if smaller >= 3 and fuzz.token_sort_ratio(joined, other_joined) >= self.fuzzy:
                return True
            if (answer_key and other_answer and jaccard >= self.answer_jaccard
                    and fuzz.token_sort_ratio(answer_key, other_answer) >= self.answer_similarity):
                return True
        return False


def qa_problem(question: object, answer: object, seen: QuestionIndex, source: str | None = None,
               min_support: float = 0.0, shown: str | None = None) -> str | None:
    """Why this QA pair must be rejected, or None.

    ``source``: the text the answer must be supported by (the support check is skipped when None
    or ``min_support`` is 0). ``shown``: everything the generator saw (its prompt, with the
    title); names and numbers in the QA must occur there (defaults to ``source``; no check when
    both are None).
    """
    if not isinstance(question, str) or not isinstance(answer, str):
        return "schema: question and answer must be strings"
    q, a = question.strip(), answer.strip()
    if not q:
        return "empty question"
    if not a:
        return "empty answer"
    if _PLACEHOLDERS.search(q) or _PLACEHOLDERS.search(a):
        return "placeholder text"
    if len(normalise(q).split()) < 3:
        return "question too short"
    if not (q.endswith("?") or _IMPERATIVE.match(q)):
        return "not a question"
    if _degenerate(a) or _degenerate(q):
        return "degenerate repetition"
    if _NON_ANSWER.search(a):
        return "non-answer"
    if _other_language(a) or _other_language(q):
        return "other language"
    known = shown if shown is not None else source
    if _CUT_OFF.search(a):
        return "answer cut off"
    if known is not None:
        if foreign_names(q, known):
            return "question names what the text does not"
        if foreign_names(a, f"{known}\n{q}"):
            return "answer names what the text does not"
    if not _FINAL.search(a):
        last = (_WORD.findall(a.lower()) or [""])[-1]
        if (len(a.split()) > 4 or last in _JOINING_WORDS
                or (known is not None and last not in _known_words(f"{known}\n{q}"))):
            return "answer cut off"
    a_stems = content_stems(a)
    if not a_stems and len(normalise(a).split()) < 2:
        return "answer too short"   # "Yes." / "4" with nothing to check it against
    if normalise(a) == normalise(q):
        return "answer repeats the question"
    if len(a) > 8 and normalise(a) in normalise(q) and not (" or " in q and len(a.split()) <= 4):
        return "question gives away the answer"
    q_stems = content_stems(q)
    if a_stems and not (a_stems - q_stems - _VAGUE_STEMS) and not (" or " in q and len(a.split()) <= 4):
        core = normalise(re.sub(r"^\s*(?:that|to|in|into|at|on|by|with|for|from|a|an|the)\s+", "", a))
        return "question gives away the answer" if a_stems - _VAGUE_STEMS and core in normalise(q) \
            else "answer repeats the question"
    if source is not None and min_support > 0 and answer_support(a, source) < min_support:
        return "answer not supported by the passage"
    if seen.duplicates(q, a):
        return "duplicate question"
    return None


def summary_problem(summary: object) -> str | None:
    """Why this summary must be rejected, or None."""
    if not isinstance(summary, str):
        return "schema: summary must be a string"
    s = summary.strip()
    if len(normalise(s).split()) < 5:
        return "summary too short"
    if _PLACEHOLDERS.search(s):
        return "placeholder text"
    if _degenerate(s):
        return "degenerate repetition"
    return None
