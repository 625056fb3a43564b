-- 002_event_ids: the message ids stored recently, sorted by id, for the sink's replay lookup.
--
-- A restarted pipeline worker may re-emit events at new offsets; before inserting a batch the sink
-- drops the rows whose (app_id, message_id) is already stored. Looking them up in `events` (sorted
-- by app, date, event and user; a bloom filter on message_id) read nearly every granule of the
-- day once a batch held more than a few hundred ids, so its cost grew with the day's volume:
-- 113 ms per 1,000-id batch at 4 million rows of a day. This table is sorted by the id, so the
-- same lookup reads only the granules of the batch's ids: about 11 ms, at 4 and at 24 million rows.
--
-- Filled from `events` by the materialized view below (same insert, same deduplication token).
-- Kept for 2 days after the insert: replays arrive within minutes of the original (a worker's
-- restart), and the Redis live counters rely on a 6 h window for the same purpose.

CREATE TABLE IF NOT EXISTS {db}.{t:event_ids} {on_cluster}
(
    app_id      LowCardinality(String),
    message_id  String,
    inserted_at DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree
PARTITION BY toDate(inserted_at)
ORDER BY (app_id, message_id)
TTL inserted_at + INTERVAL 2 DAY
SETTINGS {dedup}, index_granularity = 1024, ttl_only_drop_parts = 1;
-- @distributed event_ids cityHash64(app_id, message_id)

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t:event_ids_mv} {on_cluster} TO {db}.{t:event_ids}
AS SELECT app_id, message_id
FROM {db}.{t:events}
WHERE message_id != '';

-- the ids an existing installation stored in the last 2 days (none on a new one); re-running it
-- after a partial failure only adds rows the table's engine and the lookup's DISTINCT absorb
INSERT INTO {db}.event_ids (app_id, message_id, inserted_at)
SELECT app_id, message_id, toDateTime(inserted_at, 'UTC')
FROM {db}.events
WHERE message_id != '' AND inserted_at >= now() - INTERVAL 2 DAY;
