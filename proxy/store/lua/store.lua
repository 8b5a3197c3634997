-- Store a cached answer (and the request kept beside it), and tell every replica's L1.
-- One script so it is one round trip on Redis Cluster too, where a pipeline may not PUBLISH.
-- Time is in seconds in this script.
-- KEYS[1] the cache entry   KEYS[2] its review item (a pinned answer is not replaced)
-- KEYS[3] (optional) the request beside it        (all three in the {<digest>} slot)
-- ARGV[1] the entry's value   ARGV[2] TTL seconds   ARGV[3] L1 channel ("" for none)
-- ARGV[4] the request's value (when KEYS[3] is given)
-- Returns 1 when stored, 0 when a pinned answer holds the key (a reviewer verified it:
-- a `no-cache` request gets its fresh answer, but does not replace the pinned one).
if redis.call('HGET', KEYS[2], 'state') == 'pinned' and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if KEYS[3] then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], 'k ' .. KEYS[1])
end
return 1
