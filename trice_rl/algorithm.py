"""What every algorithm shares: the minibatch order, the optimizer, sampling and scoring of
rationales through the Policy, and checkpointable state.  Each algorithm file in
``algorithms/`` subclasses :class:`Algorithm` and writes only what makes it different."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from envs.base import Example, Task
from trice_rl import distributed
from trice_rl.options import option
from trice_rl.policy import Policy, Samples

SCHEDULES = ("constant", "cosine")


@dataclass
class AlgorithmConfig:
    """Fields every algorithm has; each algorithm's config dataclass extends this."""

    batch_size: int = option(32, "examples per optimizer step (M)")
    lr: float = option(3e-4, "AdamW learning rate (the peak of a cosine schedule)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    max_grad_norm: float | None = option(1.0, "clip the gradient norm to this (null: no clipping)")
    max_new_tokens: int = option(128, "longest rationale sampled, in tokens")
    # The TRICE paper's soft-prompt setting: lr=1.0, schedule="cosine", lr_floor=0.1,
    # max_grad_norm=None.
    schedule: str = option("constant", "learning-rate schedule: constant, or cosine (from lr down to lr·lr_floor)")
    lr_floor: float = option(0.1, "the cosine schedule's final rate, as a fraction of lr")
    schedule_steps: int | None = option(None, "optimizer steps the cosine decay spans (null: derived from the budget)")

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"{type(self).__name__}.lr must be positive, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"{type(self).__name__}.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.lr_floor <= 1:
            raise ValueError(f"{type(self).__name__}.lr_floor must be in [0, 1], got {self.lr_floor}")
        if self.schedule_steps is not None and self.schedule_steps < 1:
            raise ValueError(f"{type(self).__name__}.schedule_steps must be at least 1 (or None), got {self.schedule_steps}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"{type(self).__name__}.max_grad_norm must be positive (or None: no clipping), got {self.max_grad_norm}")


def cosine_factor(step: int, horizon: int, floor: float) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (from 0): cosine decay from 1
    to ``floor`` over ``horizon`` steps, then ``floor``."""
    progress = min(step / max(horizon - 1, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class MinibatchStream:
    """Minibatches of distinct example indices, without replacement within an epoch and a
    fresh seeded permutation each epoch: every algorithm with the same seed sees the
    training examples in the same order.

    A batch that spans an epoch boundary never holds an example twice (two TRICE chains
    would share one memory slot): the new epoch's examples already in the batch move to the
    end of that epoch's order, so each epoch still visits every example once.  A batch is
    at most the whole training set."""

    def __init__(self, num_examples: int, seed: int):
        if num_examples < 1:
            raise ValueError("the training split is empty")
        self.num_examples = num_examples
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

    def next(self, batch_size: int) -> list[int]:
        batch_size = min(batch_size, self.num_examples)
        indices: list[int] = []
        while len(indices) < batch_size:
            if self.position == self.num_examples:
                self._start_epoch(self.epoch + 1, deferred=indices)
            take = min(batch_size - len(indices), self.num_examples - self.position)
            indices += self._order[self.position : self.position + take].tolist()
            self.position += take
        return indices

    def _start_epoch(self, epoch: int, deferred: Sequence[int]) -> None:
        order = self._permutation(epoch)
        in_batch = np.isin(order, np.asarray(deferred, dtype=order.dtype))
        self.epoch, self.position = epoch, 0
        self._order = np.concatenate([order[~in_batch], order[in_batch]])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "order": self._order.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = np.asarray(state["order"]) if "order" in state else self._permutation(self.epoch)


class Algorithm:
    """Base class: the runner calls :meth:`setup` once, then :meth:`step` until the budget
    is spent.  ``metric_names`` lists the keys a step returns (the CSV columns).

    Before each step the runner sets ``sample_allowance`` to the samples the budget still
    allows (None: no samples limit); :meth:`next_batch` shrinks the minibatch to fit it, so
    that no method overshoots a samples budget.  A step that cannot fit one example is not
    taken (:meth:`step_samples`).

    In a data-parallel run (:mod:`trice_rl.distributed`) every rank draws the same
    minibatch; :meth:`sample` and :meth:`accumulate_gradient` split the work between the
    ranks and :meth:`apply_gradient` sums the gradients, so that a method written for one
    process computes everything else (correctness, weights, memory updates) on the whole
    batch, identically on every rank."""

    name: ClassVar[str] = "algorithm"
    Config: ClassVar[type] = AlgorithmConfig
    prompt_kind: ClassVar[str] = "cot"  # which template evaluation uses
    default_tune: ClassVar[str | None] = None  # a tune mode the method requires (compare.py)
    metric_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, policy: Policy, task: Task, config: AlgorithmConfig | None = None, seed: int = 0):
        self.policy = policy
        self.task = task
        self.config = config or self.Config()
        self.seed = seed
        self.train: list[Example] = task.examples("train")
        self.stream = MinibatchStream(len(self.train), seed)
        self.optimizer = self.make_optimizer()
        self.steps_done = 0
        self.sample_allowance: int | None = None
        self.schedule_step = 0  # optimizer steps taken under the current schedule
        self.schedule_horizon = self.config.schedule_steps
        self._correct_counts = [0, 0]  # since the last row: correct samples, of which steps right
        if distributed.world_size() > 1:
            self._join_ranks(policy, seed)

    @staticmethod
    def _join_ranks(policy: Policy, seed: int) -> None:
        """Every rank starts from rank 0's tunable parameters (a LoRA initialisation is
        random) and samples from a stream of its own (one stream would give every rank the
        same samples)."""
        state = policy.tunable_state_dict()
        distributed.broadcast_tensors(state.values())
        policy.load_tunable_state_dict(state)
        policy.generator.manual_seed(distributed.rank_seed(seed))

    def make_optimizer(self) -> torch.optim.Optimizer:
        return self.policy.make_optimizer(self.config.lr, weight_decay=self.config.weight_decay)

    # ------------------------------------------------------------- budgeting
    def samples_per_example(self) -> int:
        """Samples the next step draws per visited example, at most (0: it draws none)."""
        return 1

    def step_samples(self) -> int:
        """The fewest samples the next step can draw (one example's worth)."""
        return self.samples_per_example()

    def next_batch(self, batch_size: int | None = None) -> list[int]:
        """The next minibatch of distinct examples, shrunk to fit ``sample_allowance``."""
        size = batch_size or self.config.batch_size
        per_example = self.samples_per_example()
        if self.sample_allowance is not None and per_example > 0:
            size = min(size, self.sample_allowance // per_example)
        if size < 1:
            raise RuntimeError(f"{self.name}: the samples budget cannot pay for one more example ({per_example} samples)")
        return self.stream.next(size)

    def wrap_up(self) -> bool:
        """Called when the budget's sample limits are spent: whether the algorithm still has
        work that draws no samples and turns samples already paid for into training (STaR's
        fine-tuning on its last kept set); the runner then keeps stepping while the other
        limits allow."""
        return False

    def planned_optimizer_steps(self, budget) -> int | None:
        """Optimizer steps a budget allows, where it says (for the cosine schedule)."""
        if budget.optimizer_steps is not None:
            return int(budget.optimizer_steps)
        if budget.samples is not None:
            return max(1, math.ceil(budget.samples / (self.config.batch_size * max(self.samples_per_example(), 1))))
        return None

    # ------------------------------------------------------------ the contract
    def setup(self) -> dict[str, float]:
        """One-off work before the first step (charged to the budget)."""
        return {}

    def step(self) -> dict[str, float]:
        """One step of the algorithm's loop (its metrics); :meth:`take_step` counts it."""
        raise NotImplementedError

    def take_step(self) -> dict[str, float]:
        """:meth:`step`, counted in ``steps_done`` (the one count of loop steps: the runner's
        rows, checkpoints and probes read it)."""
        metrics = self.step()
        self.steps_done += 1
        return metrics

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor | None:
        """One draw of the algorithm's gradient estimator on ``indices`` at the current
        parameters, flattened, without changing any state; ``None`` where the gradient is
        not stochastic.  The runner uses it to measure estimator variance."""
        return None

    def activity(self) -> str | None:
        """What the algorithm is doing now, where a progress bar driven by the budget cannot
        show it (STaR fine-tuning: no samples drawn); ``None`` otherwise."""
        return None

    def solved_examples(self) -> np.ndarray | None:
        """Per training example, whether the method currently holds a correct rationale for
        it (its training signal for that example); ``None`` where the method keeps none.
        The runner logs this over a tracked subset, e.g. the hardest examples."""
        return None

    # ---------------------------------------------------------- shared helpers
    def cot_prompts(self, indices: Sequence[int]) -> list[str]:
        return [self.task.cot_prompt(self.train[i].question) for i in indices]

    def hinted_prompts(self, indices: Sequence[int]) -> list[str]:
        return [self.task.hinted_prompt(self.train[i].question, self.train[i].answer) for i in indices]

    def targets(self, indices: Sequence[int]) -> list[str]:
        return [self.train[i].answer for i in indices]

    def sample(self, prompts: Sequence[str], n: int = 1) -> Samples:
        """``n`` samples of each prompt; with W ranks each draws those of its share of the
        prompts, and every rank gets them all, in prompt order."""
        mine = list(prompts)[distributed.shard(len(prompts))]
        local = self.policy.sample(mine, n=n, max_new_tokens=self.config.max_new_tokens, stop=self.task.stop_strings)
        if distributed.world_size() == 1:
            return local
        rows = distributed.gather(zip(local.texts, local.token_ids, local.logprobs.cpu().tolist(), local.finished))
        texts, token_ids, logprobs, finished = (list(column) for column in zip(*rows)) if rows else ([], [], [], [])
        prompt_index = [i for i in range(len(prompts)) for _ in range(n)]
        return Samples(texts, token_ids, torch.tensor(logprobs, dtype=local.logprobs.dtype), prompt_index, finished)

    def accumulate_gradient(self, prompts: Sequence[str], completions: Sequence, coefficients: torch.Tensor) -> float:
        """Backpropagate ``-(coefficients * log p(completions | prompts)).sum()``; with W
        ranks each scores its share of the rows (coefficients are the whole batch's, so the
        shares' gradients add up in :meth:`apply_gradient`).  Returns the whole loss."""
        mine = distributed.shard(len(prompts))
        loss = self.policy.accumulate_gradient(list(prompts)[mine], list(completions)[mine], torch.as_tensor(coefficients)[mine])
        return distributed.sum_float(loss)

    def correct(self, samples: Samples, indices: Sequence[int]) -> np.ndarray:
        """Whether each sample (prompt-major, ``len(samples) / len(indices)`` per example)
        states its example's target answer.  On tasks that know their gold steps, also
        counts how many correct samples got every step right (:meth:`pop_rationale_stats`)."""
        per_example = len(samples) // max(len(indices), 1)
        rows = [i for i in indices for _ in range(per_example)]
        correct = self.task.score(samples.texts, [self.train[i].answer for i in rows]).astype(bool)
        chosen = np.flatnonzero(correct)
        steps_right = self.task.steps_right([self.train[rows[j]].question for j in chosen], [samples.texts[j] for j in chosen])
        if steps_right is not None:
            self._correct_counts[0] += len(chosen)
            self._correct_counts[1] += int(steps_right.sum())
        return correct

    def held_rationales(self) -> tuple[list[int], list[list[int]]] | None:
        """The correct rationales the method currently trains on (example indices and token
        ids); ``None`` where it keeps none."""
        return None

    def pop_rationale_stats(self) -> dict[str, float]:
        """Of the correct samples since the last call, and of the held rationales, the share
        whose every step is right (procedural tasks only): a right answer from wrong steps is
        a lucky one, and training on it teaches the wrong steps."""
        stats = {}
        if self._correct_counts[0]:
            stats["correct_steps_right"] = self._correct_counts[1] / self._correct_counts[0]
        self._correct_counts = [0, 0]
        held = self.held_rationales()
        if held and held[0]:
            texts = [self.task.cut_at_stop(self.policy.tokenizer.decode(ids, skip_special_tokens=True)) for ids in held[1]]
            steps_right = self.task.steps_right([self.train[i].question for i in held[0]], texts)
            if steps_right is not None:
                stats["held_steps_right"] = float(steps_right.mean())
        return stats

    def apply_gradient(self) -> float:
        """An optimizer step at the schedule's learning rate; returns the gradient norm."""
        config = self.config
        if config.schedule == "cosine":
            if self.schedule_horizon is None:
                raise ValueError(f"{self.name}: schedule='cosine' needs schedule_steps with a budget that does not fix the optimizer steps")
            rate = config.lr * cosine_factor(self.schedule_step, self.schedule_horizon, config.lr_floor)
            for group in self.optimizer.param_groups:
                group["lr"] = rate
        self.schedule_step += 1
        distributed.sum_gradients(self.policy.trainable_parameters())
        return self.policy.optimizer_step(self.optimizer, max_grad_norm=config.max_grad_norm)

    def supervised_step(self, prompts: Sequence[str], completions: Sequence[Sequence[int]]) -> dict[str, float]:
        """One optimizer step on the batch mean of -log p(completion | prompt)."""
        coefficients = torch.full((len(prompts),), 1.0 / len(prompts))
        loss = self.accumulate_gradient(prompts, completions, coefficients)
        return {"loss": loss, "grad_norm": self.apply_gradient()}

    def flat_gradient(self) -> torch.Tensor:
        """The accumulated gradient (summed over ranks) as one vector, then cleared (for
        estimate_gradient)."""
        parts = []
        for p in self.policy.trainable_parameters():
            parts.append(torch.zeros(p.numel()) if p.grad is None else p.grad.detach().flatten().cpu().clone())
            p.grad = None
        return distributed.sum_tensor(torch.cat(parts))

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
            "steps_done": self.steps_done,
            "schedule": {"step": self.schedule_step, "horizon": self.schedule_horizon},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        self.steps_done = int(state["steps_done"])
        schedule = state.get("schedule", {"step": 0, "horizon": self.schedule_horizon})
        self.schedule_step, self.schedule_horizon = int(schedule["step"]), schedule["horizon"]


@dataclass
class TargetTuningConfig(AlgorithmConfig):
    """``batch_size`` is M, the examples per step."""

    append_eos: bool = option(True, "each target ends with the EOS token, so the model learns to stop after it")


class TargetTuning(Algorithm):
    """Supervised tuning on one fixed target per training example (gold rationales, direct
    answers), for methods that draw no samples: each step minimises the minibatch mean of
    -log p(target | prompt).  A subclass says only which prompt and target an example gets.

    Each target is charged as one sample, so that a budget in samples gives these methods as
    many examples and optimizer steps of the same batch size as TRICE, which draws one
    sample per example per step."""

    Config: ClassVar[type] = TargetTuningConfig
    config: TargetTuningConfig
    metric_names: ClassVar[tuple[str, ...]] = ("loss", "grad_norm")

    def prompt_and_target(self, example: Example) -> tuple[str, str]:
        raise NotImplementedError

    def step(self) -> dict[str, float]:
        pairs = [self.prompt_and_target(self.train[i]) for i in self.next_batch()]
        prompts = [prompt for prompt, _ in pairs]
        token_ids = self.policy.encode_completions([target for _, target in pairs])
        if self.config.append_eos and self.policy.eos_token_ids:  # learn to stop, as sampled rationales do
            token_ids = [ids + [self.policy.eos_token_ids[0]] for ids in token_ids]
        # Each rank charges the share it trains on (accumulate_gradient's).
        self.policy.charge_targets(token_ids[distributed.shard(len(token_ids))])
        return self.supervised_step(prompts, token_ids)
