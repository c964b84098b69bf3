"""The one check every config and argument validation uses."""
from __future__ import annotations


def require(ok: bool, name: str, value: object, expected: str) -> None:
    """Raise ValueError naming the field, its bad value and what was expected."""
    if not ok:
        raise ValueError(f'{name}={value!r} is invalid: expected {expected}')
