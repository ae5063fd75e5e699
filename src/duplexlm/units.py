"""Numbers as people read them in reports and listings: counts in K/M/B, sizes in KiB/MiB.

>>> format_count(22_713_216), format_count(950), format_count(1_500, digits=1)
('22.71M', '950', '1.5K')
>>> format_bytes(2_000_000), format_bytes(3_000), format_bytes(12)
('1.91 MiB', '2.9 KiB', '12 B')
"""

from __future__ import annotations


def format_count(n: float, digits: int = 2) -> str:
    """``n`` in thousands (K), millions (M) or billions (B) with ``digits`` decimals; below 1,000 as is."""
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.{digits}f}{unit}"
    return str(int(n))


def format_bytes(n: int) -> str:
    """A size in bytes as MiB (from 1 MiB), KiB (from 1 KiB) or bytes."""
    if n >= 2**20:
        return f"{n / 2**20:,.2f} MiB"
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n} B"


__all__ = ["format_bytes", "format_count"]
