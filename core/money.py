"""Dollar amounts: the one way they are rounded, split and shown to people.

Money is `decimal.Decimal` in every layer and `Numeric(12, 6)` in the database: six
places (a micro-dollar) is finer than any provider's price, and rounding is half-up, as
the price table does it. A float never enters: it cannot hold $0.10, and a sum of
floats drifts from what the ledger settled. Every layer may import this module (it needs
only the standard library).
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

MICRO = Decimal("0.000001")


def to_micro(amount: Decimal) -> Decimal:
    """`amount` rounded half-up to whole micro-dollars (six places)."""
    return _decimal(amount).quantize(MICRO, rounding=ROUND_HALF_UP)


def split(total: Decimal, parts: int) -> list[Decimal]:
    """`total` shared over `parts` outputs, to the micro-dollar, summing back to it exactly.

    Each share is the quotient rounded half-up; the first share carries the difference
    (so three images of $0.100000 cost $0.033334, $0.033333, $0.033333). When the shares
    are so small that half-up rounding would leave the first below zero, they are
    rounded down instead, so no share is ever negative.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
        raise ValueError(f"parts must be a whole number >= 1, not {parts!r}.")
    total = to_micro(total)
    each = (total / parts).quantize(MICRO, rounding=ROUND_HALF_UP)
    if total - each * (parts - 1) < 0:
        each = (total / parts).quantize(MICRO, rounding=ROUND_DOWN)
    return [total - each * (parts - 1), *[each] * (parts - 1)]


def usd(amount: Decimal | int | str, places: int | None = None, *, grouped: bool = False) -> str:
    """`amount` as people read dollars.

    With `places`, exactly that many decimals, rounded half-up: `usd(x, 4)` → $0.1330,
    `usd(x, 2)` → $0.13. Without, every significant digit and at least cents: $0.133,
    $0.50, $0.000975. `grouped` puts commas between thousands ($100,000). A negative
    amount reads -$0.50.
    """
    value = _decimal(amount)
    if places is not None:
        if isinstance(places, bool) or not isinstance(places, int) or places < 0:
            raise ValueError(f"places must be a whole number >= 0, not {places!r}.")
        value = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
        text = format(abs(value), ",f" if grouped else "f")
    else:
        whole, _, fraction = format(abs(value).normalize(), "f").partition(".")
        if grouped:
            whole = format(int(whole), ",")
        text = f"{whole}.{fraction.ljust(2, '0')}"
    return f"{'-' if value < 0 else ''}${text}"


def _decimal(amount: Decimal | int | str) -> Decimal:
    """A Decimal from a Decimal, an int or a decimal string (as stored in JSON); not a float."""
    if isinstance(amount, bool | float):
        raise TypeError(f"money must be a Decimal, int or decimal string, not {amount!r}.")
    if isinstance(amount, Decimal):
        value = amount
    elif isinstance(amount, int | str):
        value = Decimal(amount)
    else:
        raise TypeError(f"money must be a Decimal, int or decimal string, not {amount!r}.")
    if not value.is_finite():
        raise ValueError(f"money must be a finite amount, not {amount!r}.")
    return value
