"""One meter for every run, so that algorithms are compared under identical budgets.

The Policy reports every sample drawn, token generated, token scored and optimizer step to
its :class:`BudgetMeter`; the runner stops an algorithm when a :class:`Budget` is spent.
Evaluation runs inside :meth:`BudgetMeter.paused` and is not charged.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields


@dataclass
class Budget:
    """Limits of a run; ``None`` means unlimited.  At least one limit must be set."""

    samples: int | None = None
    tokens_generated: int | None = None
    tokens_scored: int | None = None
    optimizer_steps: int | None = None
    seconds: float | None = None

    def __post_init__(self) -> None:
        limits = asdict(self)
        if all(value is None for value in limits.values()):
            raise ValueError("a Budget needs at least one limit (samples, tokens_generated, tokens_scored, optimizer_steps or seconds)")
        for name, value in limits.items():
            if value is not None and value <= 0:
                raise ValueError(f"budget {name} must be positive, got {value}")


@dataclass
class BudgetUsage:
    """A snapshot of what a run has used."""

    samples: int = 0
    tokens_generated: int = 0
    tokens_scored: int = 0
    optimizer_steps: int = 0
    seconds: float = 0.0


class BudgetMeter:
    """Counts what a run spends.

    ``seconds`` is wall time since the meter was created (or restored), minus the time spent
    inside :meth:`paused` blocks, so evaluation does not eat the training budget.
    """

    def __init__(self) -> None:
        self.samples = 0
        self.tokens_generated = 0
        self.tokens_scored = 0
        self.optimizer_steps = 0
        self._seconds_before = 0.0
        self._started = time.perf_counter()
        self._paused_depth = 0
        self._paused_since = 0.0
        self._paused_total = 0.0

    # --------------------------------------------------------------- charging
    @property
    def charging(self) -> bool:
        return self._paused_depth == 0

    def add_samples(self, samples: int, tokens_generated: int) -> None:
        if self.charging:
            self.samples += int(samples)
            self.tokens_generated += int(tokens_generated)

    def add_scored(self, tokens: int) -> None:
        if self.charging:
            self.tokens_scored += int(tokens)

    def add_optimizer_step(self) -> None:
        if self.charging:
            self.optimizer_steps += 1

    @contextmanager
    def paused(self):
        """Nothing done inside the block is charged (used for evaluation)."""
        if self._paused_depth == 0:
            self._paused_since = time.perf_counter()
        self._paused_depth += 1
        try:
            yield self
        finally:
            self._paused_depth -= 1
            if self._paused_depth == 0:
                self._paused_total += time.perf_counter() - self._paused_since

    # ---------------------------------------------------------------- reading
    @property
    def seconds(self) -> float:
        now = time.perf_counter()
        paused = self._paused_total + (now - self._paused_since if self._paused_depth else 0.0)
        return self._seconds_before + (now - self._started) - paused

    def usage(self) -> BudgetUsage:
        return BudgetUsage(self.samples, self.tokens_generated, self.tokens_scored, self.optimizer_steps, self.seconds)

    def exhausted(self, budget: Budget) -> bool:
        usage = asdict(self.usage())
        return any(limit is not None and usage[name] >= limit for name, limit in asdict(budget).items())

    def fraction_used(self, budget: Budget) -> float:
        """The largest fraction of any limit used so far (for progress bars)."""
        usage = asdict(self.usage())
        return max(usage[name] / limit for name, limit in asdict(budget).items() if limit is not None)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return asdict(self.usage())

    def load_state_dict(self, state: dict) -> None:
        known = {f.name for f in fields(BudgetUsage)}
        unknown = set(state) - known
        if unknown:
            raise ValueError(f"unknown budget meter fields {sorted(unknown)}")
        self.samples = int(state.get("samples", 0))
        self.tokens_generated = int(state.get("tokens_generated", 0))
        self.tokens_scored = int(state.get("tokens_scored", 0))
        self.optimizer_steps = int(state.get("optimizer_steps", 0))
        self._seconds_before = float(state.get("seconds", 0.0))
        self._started = time.perf_counter()
        self._paused_total = 0.0
        self._paused_since = self._started
