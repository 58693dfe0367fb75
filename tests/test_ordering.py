"""The slowest test files are handed out first (``tests/conftest.py``, ``slow`` marks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from tests.conftest import pytest_collection_modifyitems, slow_seconds


@dataclass
class Item:
    nodeid: str
    marks: dict[str, Any] = field(default_factory=dict)

    def get_closest_marker(self, name: str) -> Any:
        return self.marks.get(name)


def slow(seconds: float) -> dict[str, Any]:
    return {"slow": pytest.mark.slow(seconds).mark}


def test_slow_files_go_first_longest_first_and_the_rest_keep_their_order() -> None:
    items = [
        Item("tests/a.py::one"),
        Item("tests/b.py::one", slow(30)),
        Item("tests/c.py::one"),
        Item("tests/b.py::two", slow(30)),
        Item("tests/d.py::one", slow(150)),
        Item("tests/a.py::two"),
        Item("tests/e.py::fast"),
        Item("tests/e.py::slow_one", {"slow": pytest.mark.slow(seconds=60).mark}),
    ]
    pytest_collection_modifyitems(cast(list[pytest.Item], items))
    assert [item.nodeid for item in items] == [
        "tests/d.py::one",
        "tests/e.py::fast",  # a file goes as a whole, at the cost of its slowest test
        "tests/e.py::slow_one",
        "tests/b.py::one",
        "tests/b.py::two",
        "tests/a.py::one",
        "tests/c.py::one",
        "tests/a.py::two",
    ]


def test_a_file_without_a_mark_costs_nothing() -> None:
    assert slow_seconds(cast(pytest.Item, Item("tests/a.py::one"))) == 0.0
