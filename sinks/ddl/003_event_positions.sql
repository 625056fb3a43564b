-- 003_event_positions: where each recently stored message id was read (topic, partition, offset).
--
-- The replay lookup (sinks.clickhouse.lookup_stored_events) tells the live counters in Redis
-- which rows to count. A row whose id is stored at *its own* position is the same Kafka record,
-- inserted by an earlier attempt of its batch (a crash between the ClickHouse insert and the
-- Redis step): Redis counts it, its own offset guard stopping a second count. A row whose id is
-- stored at another position is a re-emit: Redis does not count it. This replaced the per-day
-- sets of every applied message id that Redis kept for the purpose (about 7.6 GB per 1,000
-- events/s sustained, at the end of a day).
--
-- Rows stored before this migration have no position ('', 0, 0), so they count as re-emits.

ALTER TABLE {db}.{t:event_ids} {on_cluster}
    ADD COLUMN IF NOT EXISTS _topic LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS _partition UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS _offset UInt64 DEFAULT 0;

-- on a cluster, the Distributed table over event_ids_local (on a single node the same table: a no-op)
ALTER TABLE {db}.event_ids {on_cluster}
    ADD COLUMN IF NOT EXISTS _topic LowCardinality(String) DEFAULT '',
    ADD COLUMN IF NOT EXISTS _partition UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS _offset UInt64 DEFAULT 0;

-- the view selects the positions too; MODIFY QUERY swaps it in one step, so no insert goes
-- through without its ids landing here (a DROP and CREATE would leave a gap while old sinks run)
ALTER TABLE {db}.{t:event_ids_mv} {on_cluster}
    MODIFY QUERY SELECT app_id, message_id, _topic, _partition, _offset
    FROM {db}.{t:events}
    WHERE message_id != '';
