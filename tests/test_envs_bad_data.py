"""Bad data files: each is a one-line DataError that names the file (and line or item) and
what was expected, never a crash deep inside the RNG or a bare UnicodeDecodeError."""

import json

import gymnasium as gym
import pytest

from envs import BBHTask, DataError, GSM8KTask

GOOD_LINE = b'{"question": "q", "answer": "a\\n#### 1"}'
GOOD_ITEM = {"input": "Take 1 step. Return?", "target": "Yes"}
PROMPT = "canary\n-----\nA task.\n\nQ: question\nA: Let's think step by step. Because. So the answer is Yes.\n"


def _gsm8k(tmp_path, train: bytes) -> GSM8KTask:
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_bytes(train)
    return GSM8KTask(tmp_path)


def _bbh_file(tmp_path, content: bytes, name="navigate"):
    (tmp_path / "bbh").mkdir()
    (tmp_path / "bbh" / f"{name}.json").write_bytes(content)


def _raises_one_line(pattern, call):
    with pytest.raises(DataError, match=pattern) as error:
        call()
    assert len(str(error.value).splitlines()) == 1


# ------------------------------------------------------------------------------ GSM8K
def test_empty_gsm8k_split_file(tmp_path):
    _gsm8k(tmp_path, b"")
    env = gym.make("trice_rl/GSM8K-v0", data_dir=tmp_path)
    _raises_one_line(r"gsm8k/train\.jsonl: no examples \(expected one JSON object per line", env.reset)


def test_gsm8k_blank_line(tmp_path):
    task = _gsm8k(tmp_path, GOOD_LINE + b"\n\n" + GOOD_LINE + b"\n")
    _raises_one_line(r"train\.jsonl, line 2: empty line \(expected one JSON object per line", lambda: task.examples("train"))


def test_gsm8k_non_utf8_byte(tmp_path):
    task = _gsm8k(tmp_path, GOOD_LINE + b'\n{"question": "caf\xe9", "answer": "a\\n#### 1"}\n')
    _raises_one_line(
        r"train\.jsonl, line 2 column 18: byte 0xe9 is not UTF-8 \(expected UTF-8 text\)", lambda: task.examples("train")
    )


def test_gsm8k_invalid_json_names_the_column(tmp_path):
    task = _gsm8k(tmp_path, GOOD_LINE + b'\n{"question": "q" "answer": "a\\n#### 1"}\n')
    _raises_one_line(r"train\.jsonl, line 2: not valid JSON \(Expecting ',' delimiter at column 18\)", lambda: task.examples("train"))


def test_gsm8k_wrong_type_says_what_a_line_must_hold(tmp_path):
    task = _gsm8k(tmp_path, b'{"question": ["q"], "answer": "a\\n#### 1"}\n')
    _raises_one_line(
        r"train\.jsonl, line 1: field 'question' is missing or not a string "
        r"\(expected an object with string fields 'question' and 'answer'\)",
        lambda: task.examples("train"),
    )


def test_gsm8k_final_answer_that_is_not_a_number(tmp_path):
    task = _gsm8k(tmp_path, GOOD_LINE + b'\n{"question": "q", "answer": "a\\n#### twelve"}\n')
    _raises_one_line(
        r"train\.jsonl, line 2: field 'answer' ends in '#### twelve', expected a number", lambda: task.examples("train")
    )


# -------------------------------------------------------------------------------- BBH
def test_bbh_file_with_no_examples(tmp_path):
    _bbh_file(tmp_path, b'{"canary": "x", "examples": []}')
    env = gym.make("trice_rl/BBH-navigate-v0", data_dir=tmp_path)
    _raises_one_line(r"bbh/navigate\.json: field 'examples' has 0 item\(s\), expected at least 2", env.reset)


def test_bbh_file_with_one_example_would_leave_the_test_split_empty(tmp_path):
    _bbh_file(tmp_path, json.dumps({"examples": [GOOD_ITEM]}).encode())
    env = gym.make("trice_rl/BBH-navigate-v0", data_dir=tmp_path, split="test")
    _raises_one_line(r"navigate\.json: field 'examples' has 1 item\(s\), expected at least 2", env.reset)


def test_bbh_procedural_task_with_no_real_examples(tmp_path):
    _bbh_file(tmp_path, b'{"examples": []}', name="boolean_expressions")
    task = BBHTask("boolean_expressions", tmp_path, train_source="procedural", num_train=5, num_validation=5)
    _raises_one_line(r"boolean_expressions\.json: field 'examples' has 0 item\(s\), expected at least 1", lambda: task.examples("test"))


def test_bbh_task_file_non_utf8_byte(tmp_path):
    _bbh_file(tmp_path, b'{"examples": [{"input": "caf\xe9", "target": "Yes"}]}')
    _raises_one_line(
        r"bbh/navigate\.json, line 1 column 29: byte 0xe9 is not UTF-8", lambda: BBHTask("navigate", tmp_path).examples("test")
    )


def test_bbh_prompt_file_non_utf8_byte(tmp_path):
    (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True)
    (tmp_path / "bbh" / "cot-prompts" / "navigate.txt").write_bytes(PROMPT.encode().replace(b"Because", b"Becaus\xff"))
    _raises_one_line(
        r"bbh/cot-prompts/navigate\.txt, line 6 column 36: byte 0xff is not UTF-8",
        lambda: BBHTask("navigate", tmp_path, few_shot=True),
    )


def test_bbh_target_outside_the_task_answer_format(tmp_path):
    _bbh_file(tmp_path, json.dumps({"examples": [GOOD_ITEM, {"input": "q", "target": "Maybe"}]}).encode())
    _raises_one_line(
        r"navigate\.json, examples\[1\]: field 'target' is 'Maybe', not an answer in navigate's format",
        lambda: BBHTask("navigate", tmp_path).examples("train"),
    )


def test_bbh_examples_not_a_list_says_what_is_expected(tmp_path):
    _bbh_file(tmp_path, b'{"examples": {"input": "q", "target": "Yes"}}')
    _raises_one_line(
        r"navigate\.json: field 'examples' is missing or not a list "
        r"\(of items, each an object with string fields 'input' and 'target'\)",
        lambda: BBHTask("navigate", tmp_path).examples("train"),
    )


def test_bbh_item_of_the_wrong_type_says_what_is_expected(tmp_path):
    _bbh_file(tmp_path, json.dumps({"examples": [GOOD_ITEM, {"input": "q", "target": 3}]}).encode())
    _raises_one_line(
        r"navigate\.json, examples\[1\]: field 'target' is missing or not a string "
        r"\(expected an object with string fields 'input' and 'target'\)",
        lambda: BBHTask("navigate", tmp_path).examples("train"),
    )
