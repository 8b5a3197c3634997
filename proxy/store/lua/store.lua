-- Store a cached answer (and the request kept beside it), tell every replica's L1, and,
-- for a single-flight leader, release its flight in the same call (its followers read the
-- answer just stored). One script: one round trip, on Redis Cluster too (all keys share
-- the {<digest>} slot), where a pipeline may not PUBLISH.
-- Time is in seconds in this script, but ARGV[7] (ms).
-- KEYS[1] the cache entry   KEYS[2] its review item (a pinned answer is not replaced)
-- KEYS[3] the request beside it (written only when ARGV[4] is not empty)
-- KEYS[4], KEYS[5] (optional, together) the flight lock and its chunk stream (end_flight)
-- ARGV[1] the entry's value   ARGV[2] TTL seconds   ARGV[3] L1 channel ("" for none)
-- ARGV[4] the request's value ("" for none)
-- ARGV[5] the leader's token   ARGV[6] the flight's channel   ARGV[7] chunk stream linger
-- Returns 1 when stored, 0 when a pinned answer holds the key (a reviewer verified it:
-- a `no-cache` request gets its fresh answer, but does not replace the pinned one). The
-- flight ends "done" when stored, "failed" when not (followers then call upstream).
--@include flight_end.lua
local stored = 1
if redis.call('HGET', KEYS[2], 'state') == 'pinned' and redis.call('EXISTS', KEYS[1]) == 1 then
  stored = 0
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  if ARGV[4] ~= '' then
    redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
  end
  if ARGV[3] ~= '' then
    redis.call('PUBLISH', ARGV[3], 'k ' .. KEYS[1])
  end
end
if KEYS[4] then
  local outcome = 'failed'
  if stored == 1 then outcome = 'done' end
  end_flight(KEYS[4], KEYS[5], ARGV[5], ARGV[6], outcome, ARGV[7])
end
return stored
