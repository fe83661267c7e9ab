"""Fixtures shared by the tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.snmptrapd import Snmptrapd


@pytest.fixture
def snmptrapd(tmp_path: Path) -> Iterator[Callable[..., Snmptrapd]]:
    """A factory of private snmptrapd receivers, all stopped at the end of the test.

    ``snmptrapd(users=[User(...)], communities=["public"], start=True, ...)``
    takes the arguments of ``Snmptrapd``; with ``start=False`` the caller
    starts it (for a receiver that comes up late).
    """
    made: list[Snmptrapd] = []

    def make(*, start: bool = True, **options: Any) -> Snmptrapd:
        receiver = Snmptrapd(tmp_path / f"snmptrapd-{len(made)}", **options)
        made.append(receiver)
        if start:
            receiver.start()
        return receiver

    yield make
    for receiver in made:
        receiver.stop()
