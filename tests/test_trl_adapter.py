"""trice_rl.trl_adapter: Task → datasets.Dataset and TRL reward function, and a real
GRPOTrainer run through them on a tiny random Llama."""

import pytest
import torch

from envs.arithmetic import ArithmeticTask
from trice_rl.trl_adapter import task_dataset, task_reward


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask(num_train=12, num_validation=4, num_test=6)


@pytest.mark.parametrize("split", ["train", "test"])
def test_dataset_matches_the_tasks_examples(task, split):
    examples = task.examples(split)
    ds = task_dataset(task, split)
    assert ds.column_names == ["prompt", "answer", "index"]
    assert len(ds) == len(examples)
    assert ds["prompt"] == [task.cot_prompt(e.question) for e in examples]
    assert ds["answer"] == [e.answer for e in examples]
    assert ds["index"] == list(range(len(examples)))
    assert all(isinstance(p, str) for p in ds["prompt"])  # plain text, not chat messages


def test_dataset_direct_prompts_and_bad_kind(task):
    ds = task_dataset(task, "validation", prompt_kind="direct")
    assert ds["prompt"] == [task.direct_prompt(e.question) for e in task.examples("validation")]
    with pytest.raises(ValueError, match="prompt_kind"):
        task_dataset(task, prompt_kind="hinted")
    with pytest.raises(ValueError, match="unknown split"):
        task_dataset(task, "dev")


def test_reward_scores_correct_and_incorrect_completions(task):
    reward = task_reward(task)
    assert reward.__name__ == "arithmetic_correct"
    examples = task.examples("train")[:3]
    right = [e.rationale for e in examples]
    wrong = [f"So the answer is {(int(e.answer) + 1) % 10}." for e in examples]
    completions = right + wrong + ["no answer here", ""]
    answers = [e.answer for e in examples] * 2 + [examples[0].answer] * 2
    prompts = [task.cot_prompt(examples[i % 3].question) for i in range(len(completions))]
    # The keywords GRPOTrainer passes besides the dataset columns are accepted and ignored.
    out = reward(prompts=prompts, completions=completions, answer=answers, completion_ids=[[1]] * 8, index=list(range(8)), trainer_state=None)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert all(type(x) is float for x in out)
    assert out == task.score(completions, answers).tolist()  # the Task's own scoring


def test_reward_cuts_at_stop_strings_and_reads_direct_and_chat_completions(task):
    reward = task_reward(task)
    # An answer in the run-on text after the stop string does not count; one before it does.
    assert reward(prompts=["p"] * 2, completions=["So the answer is 3.\nQuestion: What is 1 + 1? So the answer is 4.", "1 + 2 = 3.\nQuestion: So the answer is 3."], answer=["3", "3"]) == [1.0, 0.0]
    # Conversational completions: the last message's content.
    assert reward(prompts=[[{"role": "user", "content": "q"}]], completions=[[{"role": "assistant", "content": "So the answer is 7."}]], answer=["7"]) == [1.0]
    direct = task_reward(task, prompt_kind="direct")
    assert direct(prompts=["p"] * 3, completions=["7.", "8.", "7.\nQuestion: x"], answer=["7", "7", "7"]) == [1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="completions"):
        reward(prompts=["p"], completions=["a", "b"], answer=["1"])
    with pytest.raises(ValueError, match="prompt_kind"):
        task_reward(task, prompt_kind="chat")


def test_grpo_trainer_steps_through_the_adapter(task, tiny_config, char_tokenizer, tmp_path):
    """Two real GRPOTrainer steps on a tiny random Llama, offline: the reward receives
    prompts, completions and each prompt's own ``answer`` (repeated per generation), and
    TRL logs it under the function's name."""
    from transformers import LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config)
    dataset = task_dataset(task, "train")
    answer_of = dict(zip(dataset["prompt"], dataset["answer"]))
    reward = task_reward(task)
    calls = []

    def spy(prompts, completions, answer, **kwargs):
        out = reward(prompts, completions, answer, **kwargs)
        calls.append((list(prompts), list(completions), list(answer), kwargs, out))
        return out

    spy.__name__ = reward.__name__
    num_generations = 2
    args = GRPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,  # completions per step: 2 prompts x 2 generations
        num_generations=num_generations,
        max_completion_length=8,
        max_steps=2,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        bf16=False,
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=spy, args=args, train_dataset=dataset, processing_class=char_tokenizer)
    result = trainer.train()

    assert trainer.state.global_step == 2
    assert len(calls) == 2
    for prompts, completions, answers, kwargs, out in calls:
        assert len(prompts) == len(completions) == len(answers) == len(out) == 4
        assert all(isinstance(c, str) for c in completions)
        assert answers == [answer_of[p] for p in prompts]  # each prompt's own target
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3]  # groups of num_generations
        assert {"completion_ids", "index", "trainer_state"} <= set(kwargs)
        assert out == task.score([c.split("\nQuestion:")[0] for c in completions], answers).tolist()
    logged = sum(sum(out) for *_, out in calls) / sum(len(out) for *_, out in calls)
    assert result.metrics[f"rewards/{reward.__name__}/mean"] == pytest.approx(logged)
