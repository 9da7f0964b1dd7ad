"""GSM8K task: splits, gold rationales, numeric answer normalisation, data errors."""

import json
import re

import gymnasium as gym
import pytest
from hypothesis import given
from hypothesis import strategies as st

from envs import DataError, GSM8KTask
from envs.answers import last_number, normalize_number


@pytest.fixture(scope="module")
def task(data_dir):
    return GSM8KTask(data_dir)


def test_standard_split_sizes(task):
    assert len(task.examples("train")) == 7473
    assert len(task.examples("test")) == 1319


def test_targets_are_the_final_answer_without_commas(task, data_dir):
    with open(data_dir / "gsm8k" / "train.jsonl", encoding="utf-8") as lines:
        raw = [json.loads(line)["answer"] for line in lines]
    for example, solution in zip(task.examples("train"), raw):
        assert example.answer == solution.rsplit("#### ", 1)[1].strip().replace(",", "")
        assert re.fullmatch(r"-?\d+", example.answer)
    assert any("," in solution.rsplit("#### ", 1)[1] for solution in raw)  # the case is covered


@pytest.mark.parametrize("split", ["train", "test"])
def test_gold_rationales_are_clean_and_correct(task, split):
    examples = task.examples(split)
    for example in examples:
        assert "<<" not in example.rationale and ">>" not in example.rationale
        assert "####" not in example.rationale
        assert example.rationale.endswith(f"\nSo the answer is {example.answer}.")
    targets = [example.answer for example in examples]
    assert task.score([example.rationale for example in examples], targets).all()
    assert task.score([task.answer_sentence(t) for t in targets], targets).all()
    wrong = [task.answer_sentence(str(int(t) + 1)) for t in targets]
    assert not task.score(wrong, targets).any()


def test_gold_rationale_keeps_the_written_out_results(task):
    # First test item: "... = <<16-3-4=9>>9 duck eggs" becomes "... = 9 duck eggs".
    rationale = task.examples("test")[0].rationale
    assert rationale.startswith("Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n")
    assert rationale.endswith("So the answer is 18.")


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("1080", "1080"),
        ("1,080", "1080"),
        ("$1,080.00", "1080"),
        ("1,234,567", "1234567"),
        ("18.0", "18"),
        ("18.00", "18"),
        ("$18", "18"),
        ("18%", "18"),
        ("-3", "-3"),
        ("\u22123", "-3"),
        ("-$3", "-3"),
        ("$-3", "-3"),
        ("-0", "0"),
        ("2.5", "2.5"),
        ("2.50", "2.5"),
        ("0.75", "0.75"),
        ("007", "7"),
        (": 42 dollars", "42"),
        ("12345678901234567890123456789012345", "12345678901234567890123456789012345"),
        ("1,08", None),
        ("10,00", None),
        ("1/2", None),
        ("3.5.1", None),
        ("1e3", None),
        ("twelve", None),
        ("", None),
    ],
)
def test_normalize_number(text, canonical):
    assert normalize_number(text) == canonical


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_integer_spellings_normalise_alike(n):
    sign = "-" if n < 0 else ""
    spellings = [f"{n}", f"{n:,}", f"{sign}${abs(n):,}", f"{n}.0", f"{n:,}.00", f"{n}%", f"{sign}\u0024{abs(n)}.00"]
    assert {normalize_number(s) for s in spellings} == {str(n)}


_DECIMALS = st.decimals(min_value=-(10**9), max_value=10**9, places=3, allow_nan=False, allow_infinity=False)


@given(_DECIMALS, _DECIMALS, st.integers(0, 3))
def test_decimals_are_equal_exactly_when_their_values_are(x, y, extra_zeros):
    x_text = f"{x:f}" + ("0" * extra_zeros if "." in f"{x:f}" else "")
    assert normalize_number(x_text) == normalize_number(f"{x:f}")
    assert (normalize_number(f"{x:f}") == normalize_number(f"{y:f}")) == (x == y)


@pytest.mark.parametrize(
    "completion, predicted",
    [
        ("So the answer is 72.", "72"),
        ("The answer is $1,080.", "1080"),
        ("the answer is 5. Wait, no: the answer is 7.", "7"),  # the last one wins
        ("The answer is 7.\nI double-checked: the answer is 7 apples.", "7"),
        ("We get 5 + 3 = 8 cookies.", "8"),  # no "the answer is": last bare number
        ("She has 12 apples and eats 2, so 10 remain", "10"),
        ("The answer is unclear, maybe 9", None),  # stated but not a number: no fallback
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_answer(task, completion, predicted):
    assert task.extract_answer(completion) == predicted


def test_last_number():
    assert last_number("from 3 to 1,000 then -4.50 dollars.") == "-4.5"
    assert last_number("2 or 1,08") == "2"  # "1,08" is no number at all
    assert last_number("nothing") is None


def test_env_rewards_the_gold_rationale(data_dir):
    env = gym.make("trice_rl/GSM8K-v0")
    prompt, info = env.reset(seed=0, options={"split": "test", "index": 0})
    assert prompt.startswith("Question: Janet") and prompt.endswith("Answer: Let's think step by step.\n")
    assert info["target"] == "18"
    gold = env.unwrapped.task.examples("test")[0].rationale
    _, reward, terminated, truncated, info = env.step(gold)
    assert (reward, terminated, truncated, info["predicted"], info["correct"]) == (1.0, True, False, "18", True)
    _, reward, *_ = env.step("So the answer is 17.")
    assert reward == 0.0


# ------------------------------------------------------------------ data errors
def _write(tmp_path, train_lines, test_lines=('{"question": "q", "answer": "a\\n#### 1"}',)):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    (folder / "test.jsonl").write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    return GSM8KTask(tmp_path)


def test_missing_file_names_it_and_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"gsm8k/train\.jsonl.*github\.com/openai/grade-school-math"):
        GSM8KTask(tmp_path).examples("train")


def test_missing_data_folder_says_how_to_set_it(monkeypatch, tmp_path):
    """Offline, with no folder given, the failed download says how to supply the data."""
    monkeypatch.delenv("TRICE_RL_DATA", raising=False)
    monkeypatch.setenv("TRICE_RL_CACHE", str(tmp_path))
    monkeypatch.setenv("TRICE_RL_DATA_URL", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(DataError, match="TRICE_RL_DATA"):
        GSM8KTask().examples("train")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"question": "q", "answer": ', r"line 2: not valid JSON"),
        ('{"question": "q"}', r"line 2: field 'answer' is missing or not a string"),
        ('{"question": 3, "answer": "a\\n#### 1"}', r"line 2: field 'question' is missing or not a string"),
        ('["q", "a"]', r"line 2: field 'question'"),
        ('{"question": "q", "answer": "no final line"}', r"line 2: field 'answer' has no '#### ' line"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path, bad_line, message):
    task = _write(tmp_path, ['{"question": "q", "answer": "a\\n#### 1"}', bad_line])
    with pytest.raises(DataError, match=r"train\.jsonl, " + message):
        task.examples("train")
    assert len(task.examples("test")) == 1  # the other split is unaffected
