"""Answer normalisers shared by the task families.

Numbers are compared as exact decimals in a canonical string form, so ``18``, ``18.0``,
``18.00``, ``$18`` and ``18%`` all read as ``"18"`` and ``1,080`` reads as ``"1080"``, while
text that only looks like a number (``1,08``, ``1/2``, ``3.5.1``, ``1e3``) reads as no number.
"""

from __future__ import annotations

import re
from decimal import Decimal

# A number token: an optional minus sign (ASCII or U+2212) before or after an optional "$"
# (or LaTeX's "\$"), an integer part with valid thousands grouping or none, an optional
# decimal part.  It may not continue a word or another number (lookbehind), and may not run
# on into more digits, a decimal/grouping separator followed by a digit, a fraction bar or an
# exponent (lookahead): that is what rejects "1,08" (not a grouped number) instead of "1".
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z.,])"
    r"(?:(?P<sign>[-\u2212])(?:\\?\$)?|\\?\$(?P<sign_after_dollar>[-\u2212])?)?"
    r"(?P<integer>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?![0-9]|[.,/][0-9]|[eE][-+]?[0-9])"
)


def _canonical(match: re.Match[str]) -> str:
    fraction = match["fraction"] or "0"
    # format(..., "f") is exact at any size (Decimal.normalize would round to 28 digits).
    text = format(Decimal(f"{match['integer'].replace(',', '')}.{fraction}"), "f")
    text = text.rstrip("0").rstrip(".")
    negative = bool(match["sign"] or match["sign_after_dollar"])
    return f"-{text}" if negative and text != "0" else text


def normalize_number(text: str) -> str | None:
    """Canonical form of the number that ``text`` starts with (``"1080"``, ``"-3"``, ``"2.5"``).

    Leading whitespace, ``:`` and ``=`` are skipped and anything after the number (a unit,
    ``%``) is ignored, so "the answer is: $1,080 per week" reads as ``"1080"``.  ``None``
    when ``text`` does not start with a well-formed number.
    """
    match = _NUMBER.match(text.lstrip(" \t\n\r:="))
    return _canonical(match) if match else None


def last_number(text: str) -> str | None:
    """Canonical form of the last well-formed number anywhere in ``text``, or ``None``."""
    last = None
    for last in _NUMBER.finditer(text):
        pass
    return _canonical(last) if last else None
