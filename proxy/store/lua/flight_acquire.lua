-- Single flight: become the leader for a cache key, or learn who is; optionally look at
-- the cache entry first, so a request that just missed needs no recheck of its own.
-- Time is in milliseconds in this script.
--
-- KEYS[1]  the flight lock (string), hash-tagged {<digest>}.
-- KEYS[2]  (optional) the cache entry of that digest (same {<digest>} slot).
-- ARGV[1]  this request's token ("<random>:s" when the leader streams, ":n" when not).
-- ARGV[2]  lock TTL in ms; the leader refreshes it while it works, so a crashed leader's
--          lock expires and its followers stop waiting.
--
-- Returns {2, the entry} when KEYS[2] holds an answer now (no lock taken), {1, token}
-- when this request is now the leader, {0, holder's token} otherwise.
if KEYS[2] then
  local entry = redis.call('GET', KEYS[2])
  if entry then
    return {2, entry}
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1]) or ''}
