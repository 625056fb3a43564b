"""The DDL templates render to a single-node and a clustered variant."""

from __future__ import annotations

from sinks.migrate import migrations, render


def test_single_node_variant():
    stmts = render(migrations()[0].template, database="tf", dedup_window=123)
    events = next(s for s in stmts if "`tf`.events\n" in s or "`tf`.events " in s)
    assert "ENGINE = ReplacingMergeTree(processed_at)" in events
    assert "non_replicated_deduplication_window = 123" in events
    assert "ON CLUSTER" not in "".join(stmts) and "_local" not in "".join(stmts)
    assert "{" not in "".join(stmts).replace("{shard}", "")  # every marker substituted
    # the column names of the contract
    for col in ("app_id", "message_id", "type", "event", "user_key", "anonymous_id", "user_id", "session_id",
                "event_time", "received_at", "properties", "revenue", "currency", "revenue_usd",
                "revenue_reporting", "reporting_currency", "revenue_in_range", "fx_status", "media_source",
                "campaign", "_topic", "_partition", "_offset"):
        assert f"\n    {col} " in events, col


def test_clustered_variant():
    stmts = render(migrations()[0].template, database="tf", cluster="c1")
    text = "\n".join(stmts)
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tf/events_local', '{replica}', processed_at)" \
        in text
    assert "ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/tf/daily_active_local', '{replica}')" in text
    assert ("CREATE TABLE IF NOT EXISTS `tf`.events ON CLUSTER `c1` AS `tf`.events_local "
            "ENGINE = Distributed(`c1`, `tf`, events_local, cityHash64(app_id, user_key))") in stmts
    mv = next(s for s in stmts if "daily_active_mv" in s)
    assert "TO `tf`.daily_active_local" in mv and "FROM `tf`.events_local" in mv
    assert all("ON CLUSTER `c1`" in s for s in stmts)
    assert "non_replicated_deduplication_window" not in text


def test_the_event_ids_migration_in_both_variants():
    mig = next(m for m in migrations() if m.name == "event_ids")
    single = render(mig.template, database="tf")
    table, mv, backfill = single
    assert "ORDER BY (app_id, message_id)" in table and "TTL inserted_at + INTERVAL 2 DAY" in table
    assert "TO `tf`.event_ids\n" in mv and "FROM `tf`.events\n" in mv
    assert backfill.startswith("INSERT INTO `tf`.event_ids ") and "FROM `tf`.events\n" in backfill
    clustered = render(mig.template, database="tf", cluster="c1")
    text = "\n".join(clustered)
    assert "ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/tf/event_ids_local', '{replica}')" in text
    mv = next(s for s in clustered if "event_ids_mv" in s)
    assert "TO `tf`.event_ids_local" in mv and "FROM `tf`.events_local" in mv
    # the backfill reads and writes through the Distributed tables, once, from one node
    assert clustered[-1].startswith("INSERT INTO `tf`.event_ids ") and "ON CLUSTER" not in clustered[-1]


def test_the_event_positions_migration_alters_the_local_and_distributed_tables_and_the_view():
    mig = next(m for m in migrations() if m.name == "event_positions")
    single = render(mig.template, database="tf")
    assert [s.split("\n")[0] for s in single] == [
        "ALTER TABLE `tf`.event_ids ", "ALTER TABLE `tf`.event_ids ", "ALTER TABLE `tf`.event_ids_mv "]
    assert "MODIFY QUERY SELECT app_id, message_id, _topic, _partition, _offset" in single[2]
    cluster = render(mig.template, database="tf", cluster="c1")
    assert [s.split("\n")[0] for s in cluster] == [
        "ALTER TABLE `tf`.event_ids_local ON CLUSTER `c1`", "ALTER TABLE `tf`.event_ids ON CLUSTER `c1`",
        "ALTER TABLE `tf`.event_ids_mv_local ON CLUSTER `c1`"]
    assert "FROM `tf`.events_local" in cluster[2]
