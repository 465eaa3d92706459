"""Kubernetes resource quantities, read as the API server reads them, in time linear in
the text and without ever expanding an exponent.

The grammar is apimachinery's ``ParseQuantity``: an optional sign, digits with an optional
fraction (``1.``, ``.5``), then a decimal suffix (``n u m k M G T P E``), a binary one
(``Ki`` .. ``Ei``) or an exponent (``e3``, ``E-2``). Non-zero amounts round up to 1n, as
Kubernetes rounds them. Two deliberate differences, both about values no workload means:
an exponent outside int32 is refused (Kubernetes truncates it to 32 bits, so ``1e4294967296``
would silently become 1), and amounts above ``MAX`` raise ``TooLarge`` so each caller
decides: a pod's own limit is read as ``MAX``, an annotation for the proxy is refused.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Context, Decimal

MAX = Decimal(2**63 - 1)
"""The largest amount of a base unit an int64 holds: what the kubelet can use."""
_MAX_DIGITS = len(str(2**63 - 1))
_NANO = Decimal("1e-9")
_KEPT_PLACES = 30
"""Fraction digits kept before the suffix is applied: 2^60 < 10^19, so digits past the
30th place move a binary-suffixed amount by less than 1n."""
_EXACT = Context(prec=80)

_GRAMMAR = re.compile(
    r"([+-]?)([0-9]*)(?:\.([0-9]*))?(?:(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE]([+-]?[0-9]+))?"
)
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_INT32 = 2**31 - 1


class TooLarge(ValueError):
    def __init__(self) -> None:
        super().__init__(f"larger than {MAX}, the most Kubernetes can hold in an int64")


def parse(text: str) -> Decimal:
    """The amount ``text`` means, non-negative; raises ``ValueError`` saying what is wrong."""
    match = _GRAMMAR.fullmatch(text.strip())
    if not match:
        raise ValueError("not a Kubernetes quantity")
    sign, whole, fraction, suffix, exponent = match.groups()
    whole, fraction = whole.lstrip("0"), fraction or ""
    if not match.group(2) and not fraction:
        raise ValueError("not a Kubernetes quantity")
    power = _DECIMAL[suffix] if suffix in _DECIMAL else _exponent(exponent) if exponent else 0
    if not (whole or fraction.strip("0")):
        return Decimal(0)
    if sign == "-":
        raise ValueError("must not be negative")
    shift = 0 if suffix in _DECIMAL or suffix is None else _BINARY[suffix]
    # Every digit past the int64 range with a non-zero one before it is too large.
    if len(whole) + power > _MAX_DIGITS + 1:
        raise TooLarge
    amount = _significant(whole, fraction, power)
    if shift:
        amount = _EXACT.multiply(amount, Decimal(2**shift))
    amount = amount.quantize(_NANO, rounding=ROUND_CEILING, context=_EXACT)
    if amount > MAX:
        raise TooLarge
    return amount


def _exponent(text: str) -> int:
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 10 or int(digits or 0) > _INT32:
        raise ValueError("exponent out of range (at most 2147483647 either way)")
    return -int(digits or 0) if text.startswith("-") else int(digits or 0)


def _significant(whole: str, fraction: str, power: int) -> Decimal:
    """whole.fraction x 10^power, exact to the 30th fraction place; anything non-zero
    beyond adds one unit of that place, so it still rounds up."""
    digits = whole + fraction
    point = len(whole) + power  # digits[:point] is the integer part
    keep = max(point + _KEPT_PLACES, 0)
    head, tail = digits[:keep], digits[keep:]
    amount = Decimal((0, tuple(map(int, head or "0")), point - len(head)))
    if tail.strip("0"):
        amount = _EXACT.add(amount, Decimal((0, (1,), -_KEPT_PLACES)))
    return amount
