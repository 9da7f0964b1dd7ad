"""Answers in the forms models write (boxed, a colon, bold, a trailing period, option letters
with or without parentheses, booleans in any case, numbers with commas and dollar signs):
a correct answer scores 1 and a wrong one in the same form scores 0, under one rule set for
every task (README, "Answer extraction")."""

from hypothesis import example, given, settings
from hypothesis import strategies as st

from envs.arithmetic import ArithmeticTask
from envs.bbh import _LABELS as LABELS  # each label task's two labels, as the data spells them
from envs.bbh import BBHTask
from envs.gsm8k import GSM8KTask

# How a sentence states an answer ("{}" is the answer's text).
FORMS = [
    "So the answer is {}.",
    "The answer is {}",
    "The answer is: {}",
    "the answer is: {}.",
    "THE ANSWER IS {}.",
    "The answer is **{}**.",
    "The answer is: **{}**",
    "**The answer is:** {}",
    "**The answer is {}.**",
    r"So the answer is \boxed{{{}}}.",
    r"The answer is $\boxed{{{}}}$.",
    r"The answer is \(\boxed{{{}}}\).",
    r"The answer is: $\boxed{{{}}}$",
    r"\boxed{{{}}}",
    r"$\boxed{{{}}}$",
    r"\[\boxed{{{}}}\]",
    r"Final answer: \(\boxed{{\text{{{}}}}}\)",
]
# What comes before the statement: none, reasoning, or reasoning that mentions other answers
# (the statement decides, not the text around it).
PREFIXES = ["", "Let's check each step.\n", "We get {right} first, then {wrong}. ", "Maybe {wrong}? No.\n"]
SETTINGS = settings(max_examples=300, deadline=None)

GSM8K = GSM8KTask()
ARITHMETIC = ArithmeticTask()
MULTIPLE_CHOICE = BBHTask("date_understanding")
LABEL_TASKS = {name: BBHTask(name) for name in LABELS}
LONGEST_LABEL = max(len(label) for labels in LABELS.values() for label in labels)
INTEGER_TASKS = {name: BBHTask(name) for name in ("multistep_arithmetic_two", "object_counting")}


def completion(form: str, prefix: str, text: str, right: str, wrong: str) -> str:
    return prefix.format(right=right, wrong=wrong) + form.format(text)


def assert_scores(task, form, prefix, target, right_text, wrong_text):
    """The right text in ``form`` scores 1 and the wrong one 0, whatever the prefix says."""
    completions = [
        completion(form, prefix, right_text, right_text, wrong_text),
        completion(form, prefix, wrong_text, right_text, wrong_text),
    ]
    assert task.score(completions, [target, target]).tolist() == [1.0, 0.0], completions


def spell_number(n: int, spelling: str) -> str:
    """``n`` as a model may write it: plain, with thousands commas, as dollars, with cents."""
    sign = "-" if n < 0 else ""
    return {
        "plain": str(n),
        "commas": f"{n:,}",
        "dollars": f"{sign}${abs(n):,}",
        "latex dollars": f"{sign}\\${abs(n):,}",
        "cents": f"{n}.00",
    }[spelling]


NUMBER_SPELLINGS = st.sampled_from(["plain", "commas", "dollars", "latex dollars", "cents"])


@SETTINGS
@given(
    form=st.sampled_from(FORMS),
    prefix=st.sampled_from(PREFIXES),
    target=st.integers(-(10**9), 10**9),
    offset=st.integers(-(10**6), 10**6).filter(bool),
    spelling=NUMBER_SPELLINGS,
)
@example(form=r"So the answer is \boxed{{{}}}.", prefix="", target=18, offset=1, spelling="plain")
@example(form=r"The answer is $\boxed{{{}}}$.", prefix="", target=18, offset=1, spelling="plain")
@example(form="The answer is: **{}**", prefix="", target=1080, offset=-1, spelling="dollars")
def test_gsm8k_numbers(form, prefix, target, offset, spelling):
    right, wrong = spell_number(target, spelling), spell_number(target + offset, spelling)
    assert_scores(GSM8K, form, prefix, str(target), right, wrong)


def with_case(text: str, upper: list[bool]) -> str:
    return "".join(c.upper() if up else c.lower() for c, up in zip(text, upper))


@SETTINGS
@given(
    name=st.sampled_from(sorted(LABELS)),
    form=st.sampled_from(FORMS),
    prefix=st.sampled_from(PREFIXES),
    which=st.integers(0, 1),
    upper=st.lists(st.booleans(), min_size=LONGEST_LABEL, max_size=LONGEST_LABEL),
)
@example(name="boolean_expressions", form="The answer is: {}", prefix="", which=0, upper=[True] + [False] * (LONGEST_LABEL - 1))
def test_bbh_labels_in_any_case(name, form, prefix, which, upper):
    target, other = LABELS[name][which], LABELS[name][1 - which]
    assert_scores(LABEL_TASKS[name], form, prefix, target, with_case(target, upper), with_case(other, upper))


OPTION_SPELLINGS = {
    "parenthesised": "({})",
    "lower case": "({})",
    "bare": "{}",
    "closing parenthesis": "{})",
    "with its text": "({}) 12/25/1937",
}


@SETTINGS
@given(
    form=st.sampled_from(FORMS),
    prefix=st.sampled_from(PREFIXES),
    letters=st.lists(st.sampled_from("ABCDEFGHIJKLMNOPQR"), min_size=2, max_size=2, unique=True),
    spelling=st.sampled_from(sorted(OPTION_SPELLINGS)),
)
@example(form="The answer is: {}", prefix="", letters=["D", "A"], spelling="parenthesised")
@example(form="The answer is: {}", prefix="", letters=["D", "A"], spelling="bare")
@example(form="The answer is: {}", prefix="", letters=["D", "A"], spelling="closing parenthesis")
def test_bbh_option_letters(form, prefix, letters, spelling):
    case = str.lower if spelling == "lower case" else str.upper
    right, wrong = (OPTION_SPELLINGS[spelling].format(case(letter)) for letter in letters)
    assert_scores(MULTIPLE_CHOICE, form, prefix, f"({letters[0]})", right, wrong)


@SETTINGS
@given(
    name=st.sampled_from(sorted(INTEGER_TASKS)),
    form=st.sampled_from(FORMS),
    prefix=st.sampled_from(PREFIXES),
    target=st.integers(-(10**6), 10**6),
    offset=st.integers(-1000, 1000).filter(bool),
    spelling=st.sampled_from(["plain", "commas"]),
)
@example(name="multistep_arithmetic_two", form=r"So the answer is \boxed{{{}}}.", prefix="", target=-219, offset=438, spelling="plain")
def test_bbh_integers(name, form, prefix, target, offset, spelling):
    right, wrong = spell_number(target, spelling), spell_number(target + offset, spelling)
    assert_scores(INTEGER_TASKS[name], form, prefix, str(target), right, wrong)


@SETTINGS
@given(
    form=st.sampled_from(FORMS),
    prefix=st.sampled_from(PREFIXES),
    residues=st.lists(st.integers(0, 9), min_size=2, max_size=2, unique=True),
)
@example(form=r"The answer is $\boxed{{{}}}$.", prefix="", residues=[5, 6])
def test_arithmetic_residues(form, prefix, residues):
    right, wrong = (str(r) for r in residues)
    assert_scores(ARITHMETIC, form, prefix, right, right, wrong)


TASKS_AND_ANSWERS = [
    (GSM8K, "1080", "$1,080", "1,079"),
    (ARITHMETIC, "5", "5", "6"),
    (MULTIPLE_CHOICE, "(D)", "D)", "(A)"),
    (LABEL_TASKS["boolean_expressions"], "True", "TRUE", "false"),
    (INTEGER_TASKS["multistep_arithmetic_two"], "-219", "-219", "219"),
]


@SETTINGS
@given(
    task_index=st.integers(0, len(TASKS_AND_ANSWERS) - 1),
    first=st.sampled_from(FORMS),
    last=st.sampled_from(FORMS),
    separator=st.sampled_from(["\n", " ", "\nWait, let me check again.\n"]),
)
@example(task_index=0, first="The answer is {}.", last=r"So the answer is \boxed{{{}}}.", separator="\n")
def test_the_last_statement_wins_across_forms(task_index, first, last, separator):
    task, target, right, wrong = TASKS_AND_ANSWERS[task_index]
    corrected = first.format(wrong) + separator + last.format(right)
    mistaken = first.format(right) + separator + last.format(wrong)
    assert task.score([corrected, mistaken], [target, target]).tolist() == [1.0, 0.0]
