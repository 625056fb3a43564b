"""The read API accepts exactly one SQL statement."""

from __future__ import annotations

import pytest

from sinks.exceptions import ReadOnlyViolation
from sinks.sqlguard import single_statement


@pytest.mark.parametrize("sql,expected", [
    ("SELECT 1", "SELECT 1"),
    ("SELECT 1;", "SELECT 1"),
    ("  SELECT ';' AS s ;  \n", "SELECT ';' AS s"),
    ("SELECT 1 -- trailing; comment", "SELECT 1"),
    ("SELECT 1 -- a; b\nFROM t", "SELECT 1 -- a; b\nFROM t"),
    ("SELECT /* a;b */ `we;ird` FROM t", "SELECT /* a;b */ `we;ird` FROM t"),
    ("SELECT 'it\\'s;' AS x", "SELECT 'it\\'s;' AS x"),
])
def test_one_statement_passes(sql, expected):
    assert single_statement(sql) == expected


@pytest.mark.parametrize("sql", ["", "   ", ";", "-- only a comment", "SELECT 1; SELECT 2",
                                 "SELECT 1;;", "SELECT 1; DROP TABLE events", None, 42])
def test_everything_else_is_refused(sql):
    with pytest.raises(ReadOnlyViolation):
        single_statement(sql)


def test_a_statement_may_end_with_a_literal():
    assert single_statement("SELECT 1 WHERE a = 'x;y'  ;") == "SELECT 1 WHERE a = 'x;y'"
