-- Apply one batch of live-counter updates and record its last offset, atomically.
-- KEYS[1]  hash of last applied offsets, field "topic/partition"
-- ARGV[1]  field, ARGV[2] first offset of the batch, ARGV[3] last offset of the batch
-- ARGV[4..] operations, each 4 arguments: op, key, ttl_s, and its values as one JSON array of
--           strings, [arg_1, .., arg_n] (one argument instead of n: parsing and packing tens of
--           thousands of arguments per batch was most of the script's cost)
--   H key field incr      HINCRBY
--   I key incr            INCRBY
--   P key member...       PFADD (idempotent)
--   Z key score member... ZADD GT (keeps the latest time seen; idempotent)
--   R key max_score       ZREMRANGEBYSCORE -inf max_score
-- A batch whose first offset is not beyond the recorded one was applied already: nothing changes.
-- The counts cover only what the sink decided to count: an event or dead letter re-emitted at new
-- offsets by a restarted worker is left out before (sinks.clickhouse.lookup_stored_events).
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
local i = 4
local total = #ARGV
while i <= total do
  local op, key, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local v = cjson.decode(ARGV[i + 3])
  if op == 'H' then
    redis.call('HINCRBY', key, v[1], v[2])
  elseif op == 'I' then
    redis.call('INCRBY', key, v[1])
  elseif op == 'P' then
    redis.call('PFADD', key, unpack(v))
  elseif op == 'Z' then
    redis.call('ZADD', key, 'GT', unpack(v))
  elseif op == 'R' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', v[1])
  end
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  i = i + 4
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
