-- Apply one batch of live-counter updates and record its last offset, atomically.
-- KEYS[1]  hash of last applied offsets, field "topic/partition"
-- ARGV[1]  field, ARGV[2] first offset of the batch, ARGV[3] last offset of the batch
-- ARGV[4..] operations, each: op, key, ttl_s, n, arg_1 .. arg_n
--   H key field incr      HINCRBY
--   I key incr            INCRBY
--   P key member...       PFADD
--   Z key score member... ZADD GT (keeps the latest time seen)
--   R key max_score       ZREMRANGEBYSCORE -inf max_score
-- A batch whose first offset is not beyond the recorded one was applied already: nothing changes.
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
local i = 4
local total = #ARGV
while i <= total do
  local op, key, ttl, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local s = i + 4
  local e = s + n - 1
  if op == 'H' then
    redis.call('HINCRBY', key, ARGV[s], ARGV[s + 1])
  elseif op == 'I' then
    redis.call('INCRBY', key, ARGV[s])
  elseif op == 'P' then
    redis.call('PFADD', key, unpack(ARGV, s, e))
  elseif op == 'Z' then
    redis.call('ZADD', key, 'GT', unpack(ARGV, s, e))
  elseif op == 'R' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[s])
  end
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  i = e + 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
