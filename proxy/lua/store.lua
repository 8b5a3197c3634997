-- Store a cached answer (and the request kept beside it), and tell every replica's L1.
-- One script so it is one round trip on Redis Cluster too, where a pipeline may not PUBLISH.
-- Time is in seconds in this script.
-- KEYS[1] the cache entry   KEYS[2] (optional) the request beside it: same {<digest>} slot
-- ARGV[1] the entry's value   ARGV[2] TTL seconds   ARGV[3] L1 channel ("" for none)
-- ARGV[4] the request's value (when KEYS[2] is given)
-- Returns 1.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if KEYS[2] then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[2])
end
if ARGV[3] ~= '' then
  redis.call('PUBLISH', ARGV[3], 'k ' .. KEYS[1])
end
return 1
