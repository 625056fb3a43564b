"""Versioned DDL migrations (``sinks/ddl/NNN_name.sql``) and the ``schema_migrations`` table.

Each migration file is a template rendered for one of two variants:

- **single node** (default, also embedded chdb): ``{t:events}`` is ``events``, engines as written,
  and tables set ``non_replicated_deduplication_window`` so insert deduplication tokens work;
- **clustered** (``TRACKFLOW_CLICKHOUSE_CLUSTER`` set): every statement runs ``ON CLUSTER``, tables
  become ``<name>_local`` with the ``Replicated*`` engine, and each ``-- @distributed name key`` line
  adds a ``Distributed`` table ``name`` over ``name_local``, which is what queries and inserts use.

Applied versions are recorded in ``schema_migrations``; :func:`migrate` applies the missing ones in
order, statement by statement (every statement is ``IF NOT EXISTS``, so a half-applied migration can
be re-run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from clickhouse_connect.driver.client import Client

from sinks.exceptions import MigrationError

_ENGINE_RE = re.compile(r"ENGINE = (Replacing|Summing|Aggregating|)MergeTree(?:\(([^)]*)\))?")
_TABLE_RE = re.compile(r"\{t:([a-z_]+)\}")
_DIST_RE = re.compile(r"^-- @distributed (\w+) (.+)$", re.MULTILINE)
_CREATE_RE = re.compile(r"CREATE TABLE IF NOT EXISTS \{db\}\.\{t:([a-z_]+)\}")


@dataclass(frozen=True)
class Migration:
    """One migration file: ``version`` from its ``NNN_`` prefix, ``name`` and template text."""

    version: int
    name: str
    template: str


def migrations() -> list[Migration]:
    """Every shipped migration, in version order."""
    out = []
    for entry in resources.files("sinks").joinpath("ddl").iterdir():
        m = re.match(r"^(\d+)_(\w+)\.sql$", entry.name)
        if m:
            out.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out, key=lambda x: x.version)


def render(template: str, *, database: str, cluster: str | None = None, dedup_window: int = 10_000) -> list[str]:
    """The statements of one migration for the chosen variant (pure; unit tested)."""
    db = f"`{database}`"
    statements: list[str] = []
    for chunk in _split(template):
        dist = _DIST_RE.findall(chunk)
        body = "\n".join(line for line in chunk.splitlines() if not line.startswith("--")).strip()
        if not body:
            continue
        created = _CREATE_RE.search(body)
        table = created.group(1) if created else ""
        if cluster:
            body = _ENGINE_RE.sub(lambda m, t=table: _replicated(m, database, t), body)  # type: ignore[misc]
            body = body.replace("{dedup}", f"replicated_deduplication_window = {dedup_window}")
            body = _TABLE_RE.sub(lambda m: f"{m.group(1)}_local", body)
            body = body.replace("{on_cluster}", f"ON CLUSTER `{cluster}`")
        else:
            body = body.replace("{dedup}", f"non_replicated_deduplication_window = {dedup_window}")
            body = _TABLE_RE.sub(lambda m: m.group(1), body)
            body = body.replace("{on_cluster}", "")
        statements.append(body.replace("{db}", db))
        if cluster:
            for name, key in dist:
                statements.append(
                    f"CREATE TABLE IF NOT EXISTS {db}.{name} ON CLUSTER `{cluster}` AS {db}.{name}_local "
                    f"ENGINE = Distributed(`{cluster}`, `{database}`, {name}_local, {key})"
                )
    return statements


def _replicated(m: re.Match[str], database: str, table: str) -> str:
    kind, args = m.group(1), m.group(2)
    zk = f"'/clickhouse/tables/{{shard}}/{database}/{table}_local', '{{replica}}'"
    extra = f", {args}" if args else ""
    return f"ENGINE = Replicated{kind}MergeTree({zk}{extra})"


def _split(template: str) -> list[str]:
    """Split at ``;`` ending a line; the ``-- @distributed`` lines after a statement stay with it."""
    chunks: list[str] = []
    current: list[str] = []
    for line in template.splitlines():
        if line.startswith("-- @distributed") and chunks and not "".join(current).strip():
            chunks[-1] += "\n" + line
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(current).rstrip().rstrip(";")
            chunks.append(text)
            current = []
    if "\n".join(current).strip():
        chunks.append("\n".join(current))
    return chunks


def _migrations_table(database: str, cluster: str | None) -> str:
    db = f"`{database}`"
    if cluster:
        return (
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations ON CLUSTER `{cluster}` "
            "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{database}/schema_migrations', "
            "'{replica}') ORDER BY version"
        )
    return (
        f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )


def applied(client: Client, database: str) -> set[int]:
    """Versions already recorded in ``schema_migrations``."""
    rows = client.query(f"SELECT version FROM `{database}`.schema_migrations FINAL").result_rows
    return {int(r[0]) for r in rows}


def migrate(
    client: Client, *, database: str, cluster: str | None = None, dedup_window: int = 10_000
) -> list[dict[str, Any]]:
    """Create the database and apply the missing migrations. Returns what was applied."""
    on_cluster = f" ON CLUSTER `{cluster}`" if cluster else ""
    client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`{on_cluster}")
    client.command(_migrations_table(database, cluster))
    done = applied(client, database)
    out: list[dict[str, Any]] = []
    for mig in migrations():
        if mig.version in done:
            continue
        statements = render(mig.template, database=database, cluster=cluster, dedup_window=dedup_window)
        for stmt in statements:
            try:
                client.command(stmt)
            except Exception as exc:
                raise MigrationError(
                    f"migration {mig.version:03d}_{mig.name} failed: {exc}", version=mig.version, statement=stmt
                ) from exc
        client.insert(
            f"`{database}`.schema_migrations", [[mig.version, mig.name]], column_names=["version", "name"]
        )
        out.append({"version": mig.version, "name": mig.name, "statements": len(statements)})
    return out
