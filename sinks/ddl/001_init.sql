-- 001_init: events, sessions, invalid_events, fx_rates, rollups and their materialized views.
--
-- Template markers (see sinks/migrate.py):
--   {db}            the database
--   {on_cluster}    "" or "ON CLUSTER <name>"
--   {t:name}        table "name" (single node) or "name_local" (clustered)
--   {dedup}         non_replicated_deduplication_window = N (single node only)
--   ENGINE = XMergeTree(args)  becomes ReplicatedXMergeTree('/clickhouse/tables/{shard}/db/name', '{replica}', args)
--   -- @distributed name sharding_key   adds "name" as a Distributed table over name_local (clustered)
-- Column names of events, sessions and invalid_events are a public contract: extend, never rename.

CREATE TABLE IF NOT EXISTS {db}.{t:events} {on_cluster}
(
    app_id             LowCardinality(String),
    message_id         String,
    type               LowCardinality(String),
    event              String,
    user_key           String,
    device_id          String,
    anonymous_id       Nullable(String),
    user_id            Nullable(String),
    previous_id        Nullable(String),
    group_id           Nullable(String),
    session_id         Nullable(String),
    session_seq        UInt32,
    heartbeat_offset   Nullable(Float64),
    event_time         DateTime64(3, 'UTC'),
    event_date         Date DEFAULT toDate(event_time),
    hour               DateTime('UTC') DEFAULT toStartOfHour(event_time),
    client_time        Nullable(DateTime64(3, 'UTC')),
    received_at        DateTime64(3, 'UTC'),
    processed_at       DateTime64(3, 'UTC'),
    -- when the sink's insert reached ClickHouse: collector receipt -> stored latency
    inserted_at        DateTime64(3, 'UTC') DEFAULT now64(3),
    timestamp_sent     Nullable(String),
    sent_at            Nullable(String),
    source             LowCardinality(String),
    properties         String,
    traits             String,
    context            String,
    revenue            Nullable(Float64),
    currency           LowCardinality(Nullable(String)),
    revenue_usd        Nullable(Float64),
    revenue_reporting  Nullable(Float64),
    reporting_currency LowCardinality(String),
    fx_rate_usd        Nullable(Float64),
    fx_rate_reporting  Nullable(Float64),
    fx_hour            Nullable(DateTime64(3, 'UTC')),
    revenue_in_range   Bool,
    fx_status          LowCardinality(String),
    media_source       Nullable(String),
    campaign           Nullable(String),
    os                 LowCardinality(Nullable(String)),
    os_version         LowCardinality(Nullable(String)),
    app_version        LowCardinality(Nullable(String)),
    locale             LowCardinality(Nullable(String)),
    browser            LowCardinality(Nullable(String)),
    device_type        LowCardinality(Nullable(String)),
    country            LowCardinality(Nullable(String)),
    library            LowCardinality(Nullable(String)),
    ref                Nullable(String),
    ip                 Nullable(String),
    user_agent         Nullable(String),
    request_id         String,
    error_level        LowCardinality(Nullable(String)),
    error_code         Nullable(String),
    product_id         Nullable(String),
    -- frequently used property keys, extracted from the JSON text at insert time
    error_message      String DEFAULT JSONExtractString(properties, 'error_message'),
    bundle_id          String DEFAULT JSONExtractString(properties, 'bundle_id'),
    platform           String DEFAULT JSONExtractString(properties, 'platform'),
    tx_ref             String DEFAULT JSONExtractString(properties, 'tx_ref'),
    screen_name        String DEFAULT JSONExtractString(properties, 'name'),
    retention_months   UInt16 DEFAULT 24,
    _topic             LowCardinality(String),
    _partition         UInt32,
    _offset            UInt64,
    -- the sink looks up already stored message_ids before inserting (a restarted pipeline worker
    -- may re-emit events at new offsets): this index makes that lookup skip most granules
    INDEX idx_message_id message_id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = ReplacingMergeTree(processed_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY (app_id, event_date, event, user_key, message_id)
TTL toDateTime(event_time) + toIntervalMonth(retention_months)
SETTINGS {dedup};
-- @distributed events cityHash64(app_id, user_key)

CREATE TABLE IF NOT EXISTS {db}.{t:sessions} {on_cluster}
(
    app_id           LowCardinality(String),
    session_id       String,
    user_key         String,
    device_id        String,
    user_id          Nullable(String),
    started_at       DateTime64(3, 'UTC'),
    ended_at         DateTime64(3, 'UTC'),
    session_date     Date DEFAULT toDate(started_at),
    duration_s       Float64,
    events           UInt64,
    heartbeats       UInt64,
    screens          UInt64,
    first_screen     Nullable(String),
    media_source     Nullable(String),
    campaign         Nullable(String),
    closed           Bool,
    close_reason     LowCardinality(String),
    version          UInt64,
    retention_months UInt16 DEFAULT 24,
    _topic           LowCardinality(String),
    _partition       UInt32,
    _offset          UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(started_at)
ORDER BY (app_id, session_id)
TTL toDateTime(started_at) + toIntervalMonth(retention_months)
SETTINGS {dedup};
-- @distributed sessions cityHash64(app_id, session_id)

CREATE TABLE IF NOT EXISTS {db}.{t:invalid_events} {on_cluster}
(
    app_id           LowCardinality(String),
    message_id       String,
    stage            LowCardinality(String),
    reason           LowCardinality(String),
    message          String,
    field            Nullable(String),
    payload          String,
    received_at      DateTime64(3, 'UTC'),
    failed_at        DateTime64(3, 'UTC'),
    failed_date      Date DEFAULT toDate(failed_at),
    source_topic     Nullable(String),
    source_partition Nullable(Int32),
    source_offset    Nullable(Int64),
    _topic           LowCardinality(String),
    _partition       UInt32,
    _offset          UInt64,
    -- for the sink's pre-insert lookup of already stored dead letters (see events)
    INDEX idx_message_id message_id TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_source_offset source_offset TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (app_id, failed_date, reason, _topic, _partition, _offset)
TTL toDateTime(failed_at) + INTERVAL 24 MONTH
SETTINGS {dedup};
-- @distributed invalid_events cityHash64(app_id, message_id)

CREATE TABLE IF NOT EXISTS {db}.{t:fx_rates} {on_cluster}
(
    hour       DateTime('UTC'),
    currency   LowCardinality(String),
    rate       Float64,
    source     LowCardinality(String),
    fetched_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(fetched_at)
ORDER BY (hour, currency)
SETTINGS {dedup};
-- @distributed fx_rates rand()

CREATE TABLE IF NOT EXISTS {db}.{t:daily_active} {on_cluster}
(
    app_id  LowCardinality(String),
    day     Date,
    users   AggregateFunction(uniq, String),
    devices AggregateFunction(uniq, String),
    events  SimpleAggregateFunction(sum, UInt64)
)
ENGINE = AggregatingMergeTree
ORDER BY (app_id, day)
SETTINGS {dedup};
-- @distributed daily_active rand()

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t:daily_active_mv} {on_cluster} TO {db}.{t:daily_active}
AS SELECT app_id, event_date AS day, uniqState(user_key) AS users, uniqState(device_id) AS devices,
          toUInt64(count()) AS events
FROM {db}.{t:events}
GROUP BY app_id, day;

CREATE TABLE IF NOT EXISTS {db}.{t:first_seen} {on_cluster}
(
    app_id     LowCardinality(String),
    kind       LowCardinality(String),
    key        String,
    first_seen SimpleAggregateFunction(min, DateTime64(3, 'UTC'))
)
ENGINE = AggregatingMergeTree
ORDER BY (app_id, kind, key)
SETTINGS {dedup};
-- @distributed first_seen cityHash64(app_id, key)

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t:first_seen_mv} {on_cluster} TO {db}.{t:first_seen}
AS SELECT app_id, k.1 AS kind, k.2 AS key, min(event_time) AS first_seen
FROM {db}.{t:events}
ARRAY JOIN [('users', user_key), ('devices', device_id)] AS k
GROUP BY app_id, kind, key;

CREATE TABLE IF NOT EXISTS {db}.{t:revenue_daily} {on_cluster}
(
    app_id             LowCardinality(String),
    day                Date,
    currency           LowCardinality(String),
    product_id         String,
    reporting_currency LowCardinality(String),
    revenue            Float64,
    revenue_usd        Float64,
    revenue_reporting  Float64,
    purchases          UInt64,
    out_of_range       UInt64
)
ENGINE = SummingMergeTree
ORDER BY (app_id, day, currency, product_id, reporting_currency)
SETTINGS {dedup};
-- @distributed revenue_daily rand()

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t:revenue_daily_mv} {on_cluster} TO {db}.{t:revenue_daily}
AS SELECT app_id, day, cur AS currency, product AS product_id, reporting_currency,
          sumIf(amount, in_range) AS revenue,
          sumIf(amount_usd, in_range) AS revenue_usd,
          sumIf(amount_reporting, in_range) AS revenue_reporting,
          toUInt64(countIf(in_range)) AS purchases,
          toUInt64(countIf(NOT in_range)) AS out_of_range
FROM (
    SELECT app_id, event_date AS day, ifNull(currency, 'USD') AS cur, ifNull(product_id, '') AS product,
           reporting_currency, ifNull(revenue, 0) AS amount, ifNull(revenue_usd, 0) AS amount_usd,
           ifNull(revenue_reporting, 0) AS amount_reporting, revenue_in_range AS in_range
    FROM {db}.{t:events}
    WHERE revenue IS NOT NULL
)
GROUP BY app_id, day, cur, product, reporting_currency;

CREATE TABLE IF NOT EXISTS {db}.{t:errors_daily} {on_cluster}
(
    app_id LowCardinality(String),
    day    Date,
    level  LowCardinality(String),
    code   String,
    events UInt64
)
ENGINE = SummingMergeTree
ORDER BY (app_id, day, level, code)
SETTINGS {dedup};
-- @distributed errors_daily rand()

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{t:errors_daily_mv} {on_cluster} TO {db}.{t:errors_daily}
AS SELECT app_id, event_date AS day, ifNull(error_level, '') AS level, ifNull(error_code, '') AS code,
          toUInt64(count()) AS events
FROM {db}.{t:events}
WHERE isNotNull(error_level)
GROUP BY app_id, day, level, code;

CREATE TABLE IF NOT EXISTS {db}.{t:sink_batches} {on_cluster}
(
    group_id     String,
    topic        String,
    partition    UInt32,
    first_offset UInt64,
    last_offset  UInt64,
    rows         UInt64,
    token        String,
    written_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (group_id, topic, partition, first_offset)
TTL toDateTime(written_at) + INTERVAL 7 DAY;
-- @distributed sink_batches rand()
