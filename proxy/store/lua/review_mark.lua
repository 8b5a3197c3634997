-- Put one cached answer under review: a client's flag or a routine sample.
-- Time is in milliseconds in this script.
-- KEYS[1] the cache entry             KEYS[2] the request stored beside it (may be absent)
-- KEYS[3] the review item (hash)      KEYS[4] the answer under review (a copy of KEYS[1])
-- KEYS[5] the request under review    KEYS[6] each flag's own copy (list, oldest first)
--   (all six end in the {<digest>} hash tag: one slot)
-- ARGV[1] now_ms  ARGV[2] retention_ms  ARGV[3] mode: "quarantine" | "keep" | "sample"
-- ARGV[4] reason  ARGV[5] who flagged  ARGV[6] L1 channel ("" for none)
-- ARGV[7] the entry's kind (chat, cmpl, resp): decisions find the entry by it
-- ARGV[8] this flag's metadata (JSON, one line)  ARGV[9] copies kept per item (at least 2)
-- A flag appends `<metadata>\n<the answer it flagged>` to KEYS[6]: a later flag never
-- replaces an earlier one's copy. Past ARGV[9] copies the second oldest goes, so the first
-- flagged answer and the newest ones stay.
-- Returns {outcome, flags}, outcome one of:
--   "missing"  nothing to review: no cache entry and no answer under review
--   "skipped"  a sample of an answer that is queued or was reviewed already
--   "queued"   a new item, one reopened after a decision, or a pending one whose indexing
--              never completed (no `indexed` field): the caller indexes it, then sets `indexed`
--   "counted"  the item was pending and indexed already; this flag was added to it
local now, retention, mode = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local has_entry = redis.call('EXISTS', KEYS[1]) == 1
if not has_entry and redis.call('EXISTS', KEYS[4]) == 0 then
  return {'missing', 0}
end
local state = redis.call('HGET', KEYS[3], 'state')
if mode == 'sample' and state then
  return {'skipped', 0}
end
local outcome = 'counted'
if state == 'pending' and redis.call('HEXISTS', KEYS[3], 'indexed') == 0 then
  outcome = 'queued'
elseif state ~= 'pending' then
  outcome = 'queued'
  redis.call('DEL', KEYS[3], KEYS[6]) -- a reopened item starts over: no decision carries over
  local source = 'flag'
  if mode == 'sample' then source = 'sample' end
  redis.call('HSET', KEYS[3], 'state', 'pending', 'source', source, 'created_ms', now, 'flags', 0, 'kind', ARGV[7])
end
if has_entry then
  -- The reviewer sees the answer as it was when flagged, even after the entry expires.
  redis.call('SET', KEYS[4], redis.call('GET', KEYS[1]), 'PX', retention)
  local request = redis.call('GET', KEYS[2])
  if request then
    redis.call('SET', KEYS[5], request, 'PX', retention)
  else
    redis.call('DEL', KEYS[5])
  end
  -- When the entry would have expired: an approval that puts it back keeps that deadline.
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > 0 then
    redis.call('HSET', KEYS[3], 'entry_deadline_ms', tonumber(now) + pttl)
  end
  if mode == 'quarantine' then
    redis.call('DEL', KEYS[1], KEYS[2])
    redis.call('HSET', KEYS[3], 'quarantined', 1)
    if ARGV[6] ~= '' then
      redis.call('PUBLISH', ARGV[6], 'k ' .. KEYS[1])
    end
  end
end
local flags = 0
if mode ~= 'sample' then
  flags = redis.call('HINCRBY', KEYS[3], 'flags', 1)
  redis.call('HSET', KEYS[3], 'reason', ARGV[4], 'flagged_ms', now, 'flagged_by', ARGV[5])
  -- The answer this flag was about: the entry served, else the one quarantined before.
  local flagged = redis.call('GET', KEYS[4])
  if flagged then
    redis.call('RPUSH', KEYS[6], ARGV[8] .. '\n' .. flagged)
    if redis.call('LLEN', KEYS[6]) > tonumber(ARGV[9]) then
      redis.call('LSET', KEYS[6], 1, '')
      redis.call('LREM', KEYS[6], 1, '') -- index 0 is never empty: this drops index 1
    end
    redis.call('PEXPIRE', KEYS[6], retention)
  end
end
redis.call('PEXPIRE', KEYS[3], retention)
return {outcome, flags}
