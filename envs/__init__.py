"""Reasoning tasks as single-step Gymnasium environments; importing this package registers
``trice_rl/Arithmetic-v0``, ``trice_rl/GSM8K-v0`` and ``trice_rl/BBH-<task>-v0``."""

from typing import Any

import gymnasium as gym

from envs.base import (
    COT_TEMPLATE,
    DIRECT_TEMPLATE,
    HINTED_TEMPLATE,
    DataError,
    Example,
    ReasoningEnv,
    Task,
    UnicodeText,
    env_task_factory,
    register_task,
)
import envs.arithmetic  # noqa: F401  (registers trice_rl/Arithmetic-v0)
from envs.bbh import BBH_TASKS, BBHTask  # registers trice_rl/BBH-<task>-v0
from envs.gsm8k import GSM8KTask  # registers trice_rl/GSM8K-v0



def make_task(env_id: str, **kwargs: Any) -> Task:
    """The Task behind a registered environment id (no Gymnasium wrappers), for algorithms."""
    if env_id not in gym.registry:
        known = ", ".join(sorted(k for k in gym.registry if k.startswith("trice_rl/")))
        raise ValueError(f"unknown environment {env_id!r}; registered: {known}")
    factory, spec_kwargs = env_task_factory(env_id)
    return factory(**(spec_kwargs | kwargs))


__all__ = [
    "BBH_TASKS",
    "BBHTask",
    "COT_TEMPLATE",
    "DIRECT_TEMPLATE",
    "HINTED_TEMPLATE",
    "DataError",
    "Example",
    "GSM8KTask",
    "ReasoningEnv",
    "Task",
    "UnicodeText",
    "make_task",
    "register_task",
]
