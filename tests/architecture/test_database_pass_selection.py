"""The PostgreSQL + Redis pass (`--database-tests-only`, tests/conftest.py) keeps every test that
reaches a database or Redis and drops only those that ran the same code in the SQLite pass."""

from __future__ import annotations

import pytest

from tests.conftest import reaches_a_database


class FakeItem:
    def __init__(self, fixtures: tuple[str, ...], marks: tuple[str, ...] = ()) -> None:
        self.fixturenames = list(fixtures)
        self.marks = set(marks)

    def get_closest_marker(self, name: str) -> object | None:
        return object() if name in self.marks else None


@pytest.mark.parametrize(
    ("fixtures", "marks"),
    [
        (("settings", "db"), ()),
        (("transactional_db",), ()),
        (("live_server",), ()),  # pytest-django adds its database at run time
        (("tmp_path",), ("postgres",)),
        (("tmp_path",), ("redis",)),
        (("tmp_path",), ("django_db",)),
    ],
)
def test_it_keeps_a_test_that_asks_for_a_database_or_is_marked_for_one(fixtures, marks):
    assert reaches_a_database(FakeItem(fixtures, marks))


def test_it_drops_a_test_with_neither():
    assert not reaches_a_database(FakeItem(("settings", "tmp_path", "django_db_blocker"), ("slow",)))
