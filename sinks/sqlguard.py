"""Checks that SQL sent to the read API is exactly one statement (pure; ClickHouse enforces read-only).

Comments (blanked) and quoted text (masked) are hidden before looking for ``;``, so a ``;`` inside a string
literal or a comment does not count. A single trailing ``;`` is allowed and removed.
"""

from __future__ import annotations

from sinks.exceptions import ReadOnlyViolation

MAX_SQL_CHARS = 100_000


def _blank(sql: str) -> str:
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"', "`"):
            j = i + 1
            while j < n and sql[j] != c:
                j += 2 if sql[j] == "\\" else 1
            out.append("x" * (min(j, n - 1) - i + 1))  # not blank: a literal can end the statement
            i = j + 1
        elif sql.startswith("--", i) or sql.startswith("#", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(" " * (j - i))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def single_statement(sql: object) -> str:
    """The statement without its trailing ``;``; :class:`ReadOnlyViolation` if empty or several."""
    if not isinstance(sql, str) or not sql.strip():
        raise ReadOnlyViolation("sql must be a non-empty string")
    if len(sql) > MAX_SQL_CHARS:
        raise ReadOnlyViolation(f"sql is longer than {MAX_SQL_CHARS} characters")
    blank = _blank(sql)
    body = blank.rstrip()
    end = len(body)
    if body.endswith(";"):
        end -= 1
    if ";" in blank[:end]:
        raise ReadOnlyViolation("exactly one statement is allowed")
    stmt = sql[:end].strip()
    if not _blank(stmt).strip():
        raise ReadOnlyViolation("sql must contain a statement")
    return stmt
