"""What every algorithm shares: the minibatch order, the optimizer, sampling and scoring of
rationales through the Policy, and checkpointable state.  Each algorithm file in
``algorithms/`` subclasses :class:`Algorithm` and writes only what makes it different."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from envs.base import Example, Task
from trice_rl.policy import Policy, Samples


@dataclass
class AlgorithmConfig:
    """Fields every algorithm has; each algorithm's config dataclass extends this."""

    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"{type(self).__name__}.lr must be positive, got {self.lr}")


class MinibatchStream:
    """Minibatches of example indices, without replacement within an epoch and a fresh
    seeded permutation each epoch: every algorithm with the same seed sees the training
    examples in the same order."""

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
        indices: list[int] = []
        while len(indices) < batch_size:
            if self.position == self.num_examples:
                self.epoch += 1
                self.position = 0
                self._order = self._permutation(self.epoch)
            take = min(batch_size - len(indices), self.num_examples - self.position)
            indices += self._order[self.position : self.position + take].tolist()
            self.position += take
        return indices

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


class Algorithm:
    """Base class: the runner calls :meth:`setup` once, then :meth:`step` until the budget
    is spent.  ``metric_names`` lists the keys a step returns (the CSV columns)."""

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

    def make_optimizer(self) -> torch.optim.Optimizer:
        return self.policy.make_optimizer(self.config.lr, weight_decay=self.config.weight_decay)

    # ------------------------------------------------------------ the contract
    def setup(self) -> dict[str, float]:
        """One-off work before the first step (charged to the budget)."""
        return {}

    def step(self) -> dict[str, float]:
        raise NotImplementedError

    def estimate_gradient(self, indices: Sequence[int]) -> torch.Tensor | None:
        """One draw of the algorithm's gradient estimator on ``indices`` at the current
        parameters, flattened, without changing any state; ``None`` where the gradient is
        not stochastic.  The runner uses it to measure estimator variance."""
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
        return self.policy.sample(prompts, n=n, max_new_tokens=self.config.max_new_tokens, stop=self.task.stop_strings)

    def correct(self, samples: Samples, indices: Sequence[int]) -> np.ndarray:
        """Whether each sample (prompt-major, ``len(samples) / len(indices)`` per example)
        states its example's target answer."""
        per_example = len(samples) // max(len(indices), 1)
        targets = [self.train[i].answer for i in indices for _ in range(per_example)]
        return self.task.score(samples.texts, targets).astype(bool)

    def apply_gradient(self) -> float:
        return self.policy.optimizer_step(self.optimizer, max_grad_norm=self.config.max_grad_norm)

    def supervised_step(self, prompts: Sequence[str], completions: Sequence[Sequence[int]]) -> dict[str, float]:
        """One optimizer step on the batch mean of -log p(completion | prompt)."""
        coefficients = torch.full((len(prompts),), 1.0 / len(prompts))
        loss = self.policy.accumulate_gradient(prompts, completions, coefficients)
        return {"loss": loss, "grad_norm": self.apply_gradient()}

    def train_on_targets(self, prompts: Sequence[str], targets: Sequence[str], append_eos: bool = True) -> dict[str, float]:
        """A supervised step on given targets (gold rationales, direct answers), for methods
        that draw no samples.  Each target is charged as one sample, so that a budget in
        samples gives them as many examples and optimizer steps of the same batch size as
        TRICE, which draws one sample per example per step."""
        token_ids = self.policy.encode_completions(targets)
        if append_eos and self.policy.eos_token_ids:  # learn to stop, as sampled rationales do
            token_ids = [ids + [self.policy.eos_token_ids[0]] for ids in token_ids]
        self.policy.meter.add_samples(len(targets), tokens_generated=0)
        return self.supervised_step(prompts, token_ids)

    def flat_gradient(self) -> torch.Tensor:
        """The accumulated gradient as one vector, then cleared (for estimate_gradient)."""
        parts = []
        for p in self.policy.trainable_parameters():
            parts.append(torch.zeros(p.numel()) if p.grad is None else p.grad.detach().flatten().cpu().clone())
            p.grad = None
        return torch.cat(parts)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "stream": self.stream.state_dict(), "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.stream.load_state_dict(state["stream"])
        self.steps_done = int(state["steps_done"])
