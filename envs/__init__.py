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

__all__ = [
    "COT_TEMPLATE",
    "DIRECT_TEMPLATE",
    "HINTED_TEMPLATE",
    "DataError",
    "Example",
    "ReasoningEnv",
    "Task",
    "UnicodeText",
    "make_task",
    "register_task",
]
