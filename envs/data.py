"""The real data's folder (``data_dir`` or ``$TRICE_RL_DATA``; without one the files
download themselves: :mod:`envs.download`), reading its text, and the one error every data
problem raises."""

from __future__ import annotations

import os
from pathlib import Path


class DataError(ValueError):
    """A data file is missing or malformed; the message names the file, line and field."""


DATA_LAYOUT = (
    "a folder laid out as gsm8k/train.jsonl, gsm8k/test.jsonl, bbh/<task>.json, "
    "bbh/cot-prompts/<task>.txt (GSM8K: github.com/openai/grade-school-math, BIG-Bench Hard: "
    "github.com/suzgunmirac/BIG-Bench-Hard)"
)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """``data_dir`` if given, else ``$TRICE_RL_DATA``; ``None`` means the files download themselves."""
    if data_dir is None:
        data_dir = os.environ.get("TRICE_RL_DATA")
    return Path(data_dir).expanduser() if data_dir else None


def read_data_text(path: Path) -> str:
    """The file's UTF-8 text; a DataError names the line and column of a byte that is not UTF-8
    (Python's own error names neither the file nor the line)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - raw.rfind(b"\n", 0, error.start)
        raise DataError(
            f"{path}, line {line} column {column}: byte 0x{raw[error.start]:02x} is not UTF-8 (expected UTF-8 text)"
        ) from None
