"""Every registered ``trice_rl/`` environment: Gymnasium's checker, vector envs, and any
string as an action (garbage earns 0, never an exception)."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs  # registers the ids
from envs import make_task

ENV_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("trice_rl/"))
# One task per answer format (numbers with the bare-number fallback, plain numbers, letters,
# labels, Dyck brackets, word lists) plus the procedural arithmetic task.
FORMAT_IDS = [
    "trice_rl/GSM8K-v0",
    "trice_rl/Arithmetic-v0",
    "trice_rl/BBH-multistep_arithmetic_two-v0",
    "trice_rl/BBH-date_understanding-v0",
    "trice_rl/BBH-formal_fallacies-v0",
    "trice_rl/BBH-dyck_languages-v0",
    "trice_rl/BBH-word_sorting-v0",
]

GARBAGE = [
    "",
    " ",
    "\x00",
    "\x00" * 1000,
    "\ud800",  # a lone surrogate
    "the answer is \udfff",
    "\u202eThe answer is \u05d0\u05d1\u05d2",  # right-to-left override, Hebrew
    "So the answer is \U0001f600\U0001f4a9.",
    "So the answer is",
    "the answer is " * 10_000,
    "x" * 1_000_000,
    "So the answer is " + "(" * 1_000_000,
    "So the answer is " + "9" * 1_000_000,  # a number far past the 100k-character window
    "\n" * 100_000,
    "ÿ" * 1_000_000,
]

ODD_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=300)
PREFIXES = st.sampled_from(["", "So the answer is ", "The answer is: ", "the answer is (", "The answer is -$"])


def test_all_ids_are_registered():
    expected = {"trice_rl/Arithmetic-v0", "trice_rl/GSM8K-v0"} | {f"trice_rl/BBH-{name}-v0" for name in envs.BBH_TASKS}
    assert len(expected) == 29 and expected <= set(ENV_IDS)
    assert set(FORMAT_IDS) <= expected


@pytest.mark.filterwarnings("ignore:.*render fps")
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id, data_dir):
    env = gym.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_sync_vector_env(env_id, data_dir):
    envs_ = gym.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    prompts, infos = envs_.reset(seed=[1, 2])
    assert isinstance(prompts, tuple) and len(prompts) == 2 and all(isinstance(p, str) for p in prompts)
    targets = infos["target"]
    actions = (f"So the answer is {targets[0]}.", "garbage \x00 \ud800")
    _, rewards, terminated, truncated, step_infos = envs_.step(actions)
    assert rewards.tolist() == [1.0, 0.0]
    assert terminated.all() and not truncated.any()
    assert step_infos["correct"].tolist() == [True, False]
    envs_.close()


@pytest.fixture(scope="module")
def format_envs(data_dir):
    made = {env_id: gym.make(env_id) for env_id in FORMAT_IDS}
    for env in made.values():
        env.reset(seed=0)
    return made


@pytest.mark.parametrize("env_id", FORMAT_IDS)
@pytest.mark.parametrize("action", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_earns_zero(format_envs, env_id, action):
    env = format_envs[env_id]
    env.reset(seed=0)
    observation, reward, terminated, truncated, info = env.step(action)
    assert (reward, terminated, truncated, info["correct"]) == (0.0, True, False, False)
    assert isinstance(observation, str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env_index=st.integers(0, len(FORMAT_IDS) - 1), prefix=PREFIXES, text=ODD_TEXT, seed=st.integers(0, 2**16))
def test_any_string_is_a_valid_action(format_envs, env_index, prefix, text, seed):
    env = format_envs[FORMAT_IDS[env_index]]
    _, info = env.reset(seed=seed)
    _, reward, terminated, truncated, step_info = env.step(prefix + text)
    assert reward in (0.0, 1.0) and terminated and not truncated
    assert reward == float(step_info["correct"]) and step_info["target"] == info["target"]
    if step_info["predicted"] is None:
        assert reward == 0.0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(ODD_TEXT, min_size=1, max_size=5), env_index=st.integers(0, len(FORMAT_IDS) - 1))
def test_task_score_accepts_any_strings(format_envs, texts, env_index):
    task = format_envs[FORMAT_IDS[env_index]].unwrapped.task
    targets = [task.examples("train")[0].answer] * len(texts)
    scores = task.score(texts, targets)
    assert scores.dtype == np.float32 and scores.shape == (len(texts),)
    assert set(scores.tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("env_id", FORMAT_IDS)
def test_task_score_of_garbage_is_zero(env_id, data_dir):
    task = make_task(env_id)
    target = task.examples("test")[0].answer
    assert not task.score(GARBAGE, [target] * len(GARBAGE)).any()
