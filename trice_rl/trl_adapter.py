"""Train on the project's reasoning environments with TRL.

Three functions turn a :class:`~envs.base.Task` and this project's ``grpo`` settings into
what TRL's ``GRPOTrainer`` consumes:

* :func:`task_dataset`: a ``datasets.Dataset`` with columns ``prompt`` (the plain-text
  prompt, not chat messages), ``answer`` (the target) and ``index`` (the example's position
  in the split);
* :func:`task_reward`: a reward function ``reward(prompts, completions, answer, **kwargs)
  -> list[float]`` that returns 1.0 for a completion stating the right answer, else 0.0, by
  the Task's own batched :meth:`~envs.base.Task.score`.  GRPOTrainer passes every extra
  dataset column as a keyword argument (one entry per completion), which is how ``answer``
  arrives;
* :func:`matching_grpo_config`: a ``GRPOConfig`` that trains as this project's ``grpo``
  does (for the benchmarks that set the two side by side).

Usage::

    import envs
    from trl import GRPOConfig, GRPOTrainer
    from trice_rl.trl_adapter import task_dataset, task_reward

    task = envs.make_task("trice_rl/Arithmetic-v0")
    trainer = GRPOTrainer(
        model="path/to/causal-lm",
        reward_funcs=task_reward(task),
        args=GRPOConfig(output_dir="runs/trl-grpo", num_generations=8, max_completion_length=128),
        train_dataset=task_dataset(task, "train"),
    )
    trainer.train()

TRL does not stop generation at the task's stop strings (``"\\nQuestion:"``: the model
running on into a next question), so the reward cuts each completion before the first stop
string, as :meth:`trice_rl.policy.Policy.sample` does, before the answer is read; an answer
stated in the run-on text never counts.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from envs.base import ANSWERING_PROMPT_KINDS, Task

PROMPT_KINDS = ANSWERING_PROMPT_KINDS  # a TRL run trains on these


def task_dataset(task: Task, split: str = "train", prompt_kind: str = "cot"):
    """The examples of ``task``'s ``split`` as a ``datasets.Dataset`` for TRL.

    Columns: ``prompt`` (str: ``task.cot_prompt(question)``, or ``task.direct_prompt`` with
    ``prompt_kind="direct"``), ``answer`` (str: the target) and ``index`` (int: position in
    ``task.examples(split)``).  Prompts are plain text (TRL's "standard" format), so no chat
    template is applied.

    Example::

        >>> from envs.arithmetic import ArithmeticTask
        >>> ds = task_dataset(ArithmeticTask(num_train=4), "train")
        >>> ds.column_names
        ['prompt', 'answer', 'index']
        >>> ds[0]["prompt"].startswith("Question: What is")
        True
    """
    from datasets import Dataset

    if prompt_kind not in PROMPT_KINDS:
        raise ValueError(f"prompt_kind must be one of {', '.join(PROMPT_KINDS)}, got {prompt_kind!r}")
    examples = task.examples(split)
    return Dataset.from_dict(
        {
            "prompt": [task.prompt(prompt_kind, e.question) for e in examples],
            "answer": [e.answer for e in examples],
            "index": list(range(len(examples))),
        }
    )


def _completion_text(completion: Any) -> str:
    """Plain text of a completion; a conversational one (a list of messages) gives the
    content of its last message."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        if isinstance(content, list):  # multimodal content blocks
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    return str(completion)


def task_reward(task: Task, prompt_kind: str = "cot") -> Callable[..., list[float]]:
    """A TRL reward function: correctness of each completion's answer under ``task``.

    The returned callable has the signature GRPOTrainer uses for custom reward functions,
    ``reward(prompts, completions, answer, **kwargs) -> list[float]`` (``answer`` is the
    dataset column of :func:`task_dataset`, repeated per generation; ``completion_ids``,
    ``trainer_state`` and any other keyword are ignored).  Each completion is cut before
    the first of ``task.stop_strings`` and scored with ``task.score``; with
    ``prompt_kind="direct"`` it is read as the continuation of "The answer is ".  The
    function's ``__name__`` (``"<task name>_correct"``) names the reward in TRL's logs.

    Example::

        >>> from envs.arithmetic import ArithmeticTask
        >>> reward = task_reward(ArithmeticTask())
        >>> reward(prompts=["", ""], completions=["1 + 2 = 3. So the answer is 3.", "So the answer is 4."],
        ...        answer=["3", "3"])
        [1.0, 0.0]
    """
    if prompt_kind not in PROMPT_KINDS:
        raise ValueError(f"prompt_kind must be one of {', '.join(PROMPT_KINDS)}, got {prompt_kind!r}")

    def reward(prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[str], **kwargs: Any) -> list[float]:
        if len(completions) != len(answer):
            raise ValueError(f"{reward.__name__}: {len(completions)} completions but {len(answer)} answers")
        texts = [task.cut_at_stop(_completion_text(c)) for c in completions]
        return [float(x) for x in task.score(texts, [str(a) for a in answer], kind=prompt_kind)]

    name = "".join(ch if ch.isalnum() else "_" for ch in getattr(task, "name", "task"))
    reward.__name__ = reward.__qualname__ = f"{name}_correct"
    reward.__doc__ = f"1.0 if a completion states the target answer of task {getattr(task, 'name', 'task')!r}, else 0.0."
    return reward


def matching_grpo_config(output_dir: str, prompts_per_step: int, group_size: int, max_completion_length: int, max_steps: int, learning_rate: float, seed: int = 0, **overrides: Any):
    """A ``GRPOConfig`` for the update this project's ``grpo`` makes: ``prompts_per_step`` ×
    ``group_size`` completions per optimizer step, loss ``dr_grpo`` (a constant divisor,
    which Adam ignores), rewards scaled by the group's std, no KL term, AdamW at a constant
    rate, gradients clipped at 1.0; on the CPU in fp32, without logging, saving or progress
    bars.  ``overrides`` replace any field (e.g. ``generation_kwargs``)."""
    from trl import GRPOConfig

    fields = dict(
        output_dir=output_dir,
        per_device_train_batch_size=prompts_per_step * group_size,
        num_generations=group_size,
        max_completion_length=max_completion_length,
        max_steps=max_steps,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        loss_type="dr_grpo",
        scale_rewards="group",
        beta=0.0,
        temperature=1.0,
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        use_cpu=True,
        bf16=False,
        seed=seed,
        # no side output, no extra processes
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    return GRPOConfig(**(fields | overrides))

