"""Reasoning tasks as single-step Gymnasium environments; importing this package registers
``trice_rl/Arithmetic-v0``, ``trice_rl/GSM8K-v0`` and ``trice_rl/BBH-<task>-v0``."""

from envs.base import (
    COT_TEMPLATE,
    DIRECT_TEMPLATE,
    HINTED_TEMPLATE,
    DataError,
    Example,
    ReasoningEnv,
    Task,
    UnicodeText,
    make_task,
    register_task,
)
import envs.arithmetic  # noqa: F401  (registers trice_rl/Arithmetic-v0)
from envs.bbh import BBH_TASKS, BBHTask  # registers trice_rl/BBH-<task>-v0
from envs.gsm8k import GSM8KTask  # registers trice_rl/GSM8K-v0

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
