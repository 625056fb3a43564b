-- Apply one batch of live-counter updates and record its last offset, atomically.
-- KEYS[1]  hash of last applied offsets, field "topic/partition"
-- ARGV[1]  field, ARGV[2] first offset of the batch, ARGV[3] last offset of the batch
-- ARGV[4..] operations, each 4 arguments: op, key, ttl_s, and its values as one JSON array of
--           strings, [arg_1, .., arg_n] (one argument instead of n: parsing and packing tens of
--           thousands of arguments per batch was most of the script's cost)
--   S key id...           add the ids to the set of applied ids (SMISMEMBER, then SADD, per 1,000);
--                         the ids of all S operations are numbered 1, 2, ... in order; an id not
--                         in the set before, at its first occurrence in the batch (or an empty
--                         id: never deduplicated), is "new". S operations come first.
--   C key field idx...    HINCRBY key field by the number of new ids among idx
--   H key field incr      HINCRBY (unconditional)
--   I key incr            INCRBY (unconditional)
--   P key member...       PFADD (idempotent)
--   Z key score member... ZADD GT (keeps the latest time seen; idempotent)
--   R key max_score       ZREMRANGEBYSCORE -inf max_score
-- A batch whose first offset is not beyond the recorded one was applied already: nothing changes.
-- S and C serve the dead letters: one already applied by an earlier batch (same identity, e.g.
-- re-emitted by a restarted worker at new offsets) changes no counter. Events come with plain
-- counts (H, I): the sink has left their re-emits out before planning.
local last = redis.call('HGET', KEYS[1], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
local CHUNK = 1000
local new = {}
local seq = 0
local i = 4
local total = #ARGV
while i <= total do
  local op, key, ttl = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local v = cjson.decode(ARGV[i + 3])
  local e = #v
  local touched = true
  if op == 'S' then
    -- in chunks of one SMISMEMBER and one SADD each (a call per id was most of the script's time,
    -- and of the AOF); an id repeated within the batch is new only the first time, as with SADD
    local first = {}
    for c = 1, e, CHUNK do
      local last = math.min(c + CHUNK - 1, e)
      local ids = {}
      for j = c, last do
        local id = v[j]
        if id ~= '' then
          ids[#ids + 1] = id
        end
      end
      local member = {}
      if #ids > 0 then
        member = redis.call('SMISMEMBER', key, unpack(ids))
        redis.call('SADD', key, unpack(ids))
      end
      local k = 0
      for j = c, last do
        seq = seq + 1
        local id = v[j]
        if id == '' then
          new[seq] = true
        else
          k = k + 1
          if member[k] == 0 and not first[id] then
            first[id] = true
            new[seq] = true
          end
        end
      end
    end
  elseif op == 'C' then
    local c = 0
    for j = 2, e do
      if new[tonumber(v[j])] then
        c = c + 1
      end
    end
    if c > 0 then
      redis.call('HINCRBY', key, v[1], c)
    else
      touched = false
    end
  elseif op == 'H' then
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
  if touched and ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  end
  i = i + 4
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
