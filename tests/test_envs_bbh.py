"""BIG-Bench Hard tasks: the 60/40 splits, every answer format, few-shot prompts and data
errors (procedural training data: test_procedural_bbh.py)."""

import json
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

from envs import BBH_TASKS, BBHTask, DataError


def _read(data_dir, name):
    return json.loads((data_dir / "bbh" / f"{name}.json").read_text(encoding="utf-8"))["examples"]


def test_the_27_tasks_match_the_data_files(data_dir):
    assert len(BBH_TASKS) == 27
    assert set(BBH_TASKS) == {path.stem for path in (data_dir / "bbh").glob("*.json")}
    for name in BBH_TASKS:
        assert f"trice_rl/BBH-{name}-v0" in gym.registry


@pytest.mark.parametrize("name", BBH_TASKS)
def test_split_covers_every_item_once_and_gold_answers_score(name, data_dir):
    task = BBHTask(name, data_dir)
    train, test = task.examples("train"), task.examples("test")
    items = _read(data_dir, name)
    assert (len(train), len(test)) == (round(0.6 * len(items)), len(items) - round(0.6 * len(items)))
    assert Counter((e.question, e.answer) for e in train + test) == Counter((i["input"], i["target"]) for i in items)
    assert [e.question for e in BBHTask(name, data_dir).examples("test")] == [e.question for e in test]

    targets = [e.answer for e in train + test]
    assert task.score([task.answer_sentence(t) for t in targets], targets).all()
    # A wrong answer: another target of the same task that means something else.
    canonical = {t: task.normalize(t) for t in set(targets)}
    wrong = [next(o for o in sorted(canonical) if canonical[o] != canonical[t]) for t in targets]
    assert not task.score([task.answer_sentence(w) for w in wrong], targets).any()


def test_split_is_pinned(data_dir):
    """Published numbers depend on the split: fail loudly if it ever changes (e.g. numpy)."""
    task = BBHTask("boolean_expressions", data_dir)
    assert [e.question for e in task.examples("train")[:2]] == [
        "not True and False or False or True is",
        "not False or True or True and False is",
    ]
    assert [e.question for e in task.examples("test")[:2]] == [
        "not not not not not not not False is",
        "not not False or not False or True is",
    ]


def test_split_follows_the_documented_rule_and_depends_on_the_seed(data_dir):
    items = _read(data_dir, "date_understanding")
    order = np.random.default_rng(0).permutation(len(items))
    train = BBHTask("date_understanding", data_dir).examples("train")
    assert [e.question for e in train] == [items[i]["input"] for i in order[:150]]
    other = BBHTask("date_understanding", data_dir, seed=1).examples("train")
    assert [e.question for e in other] != [e.question for e in train]


@pytest.mark.parametrize(
    "name, completion, target, correct",
    [
        ("date_understanding", "So the answer is (B).", "(B)", True),
        ("date_understanding", "So the answer is B.", "(B)", True),
        ("date_understanding", "So the answer is (B) 12/25/1937.", "(B)", True),
        ("date_understanding", "So the answer is (b).", "(B)", True),
        ("date_understanding", "So the answer is B) 12/25/1937", "(B)", True),
        ("date_understanding", "So the answer is (C).", "(B)", False),
        ("date_understanding", "So the answer is Bob.", "(B)", False),
        ("date_understanding", "the answer is (A) or (B)", "(B)", False),
        ("movie_recommendation", "So the answer is Monsters, Inc.", "Monsters, Inc", True),
        ("movie_recommendation", "So the answer is monsters,  inc", "Monsters, Inc", True),
        ("movie_recommendation", "So the answer is (A).", "Monsters, Inc", False),
        ("ruin_names", "So the answer is dearth, wind, & fire.", "dearth, wind, & fire", True),
        ("ruin_names", "So the answer is rita, sue and bob poo.", "rita, sue and bob poo", True),
        ("ruin_names", "So the answer is (D).", "rita, sue and bob poo", False),
        ("boolean_expressions", "So the answer is True.", "True", True),
        ("boolean_expressions", "So the answer is true", "True", True),
        ("boolean_expressions", "So the answer is False.", "True", False),
        ("boolean_expressions", "So the answer is Truely.", "True", False),
        ("formal_fallacies", "So the answer is valid.", "valid", True),
        ("formal_fallacies", "So the answer is invalid.", "valid", False),
        ("formal_fallacies", "So the answer is invalid.", "invalid", True),
        ("formal_fallacies", "So the answer is valid.", "invalid", False),
        ("causal_judgement", "So the answer is Yes.", "Yes", True),
        ("causal_judgement", "So the answer is yes, clearly.", "Yes", True),
        ("causal_judgement", "So the answer is No.", "Yes", False),
        ("causal_judgement", "So the answer is yesterday.", "Yes", False),
        ("sports_understanding", "So the answer is Yes.", "yes", True),
        ("sports_understanding", "So the answer is no.", "yes", False),
        ("multistep_arithmetic_two", "So the answer is -219.", "-219", True),
        ("multistep_arithmetic_two", "So the answer is 219.", "-219", False),
        ("multistep_arithmetic_two", "So the answer is 250,992.", "250992", True),
        ("object_counting", "So the answer is 8.", "8", True),
        ("object_counting", "So the answer is 8.0 fruits.", "8", True),
        ("object_counting", "I count 8 fruits.", "8", False),  # BBH needs "the answer is"
        ("dyck_languages", "So the answer is ] ) >.", "] ) >", True),
        ("dyck_languages", "So the answer is ])>", "] ) >", True),
        ("dyck_languages", "So the answer is ] )", "] ) >", False),
        ("dyck_languages", "So the answer is ] ) > done", "] ) >", False),
        ("word_sorting", "So the answer is apple  Banana cherry.", "apple banana cherry", True),
        ("word_sorting", "So the answer is banana apple cherry.", "apple banana cherry", False),
    ],
)
def test_answer_formats(name, completion, target, correct, data_dir):
    assert BBHTask(name, data_dir).is_correct(completion, target) is correct


@pytest.mark.parametrize("name", BBH_TASKS)
def test_few_shot_prefix_holds_the_three_exemplars_in_our_template(name, data_dir):
    task = BBHTask(name, data_dir, few_shot=True)
    prefix = task.few_shot_prefix
    blocks = prefix.split("\n\nQuestion: ")
    assert len(blocks) == 3 and prefix.startswith("Question: ") and prefix.endswith("\n\n")
    for block in blocks:
        question, rationale = block.split("\nAnswer: Let's think step by step.\n")
        assert question.strip() == question and rationale.strip() == rationale.removesuffix("\n\n")
        assert task.extract_answer(rationale) is not None
    assert "BENCHMARK DATA" not in prefix and "-----" not in prefix.split("\n")
    assert "\nQ: " not in prefix and "\nA: " not in prefix
    question = task.examples("test")[0].question
    assert task.cot_prompt(question) == prefix + f"Question: {question}\nAnswer: Let's think step by step.\n"
    assert BBHTask(name, data_dir).cot_prompt(question) == f"Question: {question}\nAnswer: Let's think step by step.\n"


def test_few_shot_rationale_is_copied_verbatim(data_dir):
    task = BBHTask("sports_understanding", data_dir, few_shot=True)
    assert task.few_shot_prefix.startswith(
        'Question: Is the following sentence plausible? "Bam Adebayo scored a reverse layup in the Western '
        'Conference Finals."\nAnswer: Let\'s think step by step.\nBam Adebayo is an American basketball player.'
    )


def test_env_options(data_dir):
    env = gym.make("trice_rl/BBH-formal_fallacies-v0", few_shot=True)
    prompt, info = env.reset(seed=3, options={"split": "test", "index": 7})
    assert prompt.startswith("Question: ") and prompt.count("Answer: Let's think step by step.") == 4
    _, reward, terminated, _, step_info = env.step(f"So the answer is {info['target']}.")
    assert reward == 1.0 and terminated and step_info["predicted"] == info["target"]


def test_invalid_arguments(data_dir):
    with pytest.raises(ValueError, match="unknown BBH task"):
        BBHTask("no_such_task", data_dir)
    with pytest.raises(ValueError, match="train_source"):
        BBHTask("navigate", data_dir, train_source="synthetic")
    with pytest.raises(ValueError, match="only for boolean_expressions, multistep_arithmetic_two"):
        BBHTask("navigate", data_dir, train_source="procedural")


# ------------------------------------------------------------------ data errors
def _bbh_folder(tmp_path, content, name="navigate"):
    (tmp_path / "bbh").mkdir(exist_ok=True)
    (tmp_path / "bbh" / f"{name}.json").write_text(content, encoding="utf-8")
    return BBHTask(name, tmp_path)


def test_missing_task_file_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"bbh/navigate\.json.*github\.com/suzgunmirac/BIG-Bench-Hard"):
        BBHTask("navigate", tmp_path).examples("train")


def test_missing_prompt_file_names_it(tmp_path):
    with pytest.raises(DataError, match=r"bbh/cot-prompts/navigate\.txt"):
        BBHTask("navigate", tmp_path, few_shot=True)


def test_prompt_file_without_exemplars(tmp_path):
    (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True)
    (tmp_path / "bbh" / "cot-prompts" / "navigate.txt").write_text("canary\n-----\nA task.\n\nQ: only a question\n")
    with pytest.raises(DataError, match=r"navigate\.txt: no exemplars"):
        BBHTask("navigate", tmp_path, few_shot=True)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"canary": "x",\n "examples": [{"input": "q", "target": "Yes"},]}', r"navigate\.json, line 2 column \d+: not valid JSON"),
        ('{"canary": "x"}', r"navigate\.json: field 'examples' is missing or not a list"),
        ('[]', r"field 'examples'"),
        ('{"examples": [{"input": "q", "target": "Yes"}, {"input": "q"}]}', r"navigate\.json, examples\[1\]: field 'target' is missing"),
        ('{"examples": [{"input": ["q"], "target": "Yes"}]}', r"examples\[0\]: field 'input' is missing or not a string"),
        ('{"examples": ["q"]}', r"examples\[0\]: field 'input'"),
    ],
)
def test_malformed_task_file_names_file_position_and_field(tmp_path, content, message):
    with pytest.raises(DataError, match=message):
        _bbh_folder(tmp_path, content).examples("test")
