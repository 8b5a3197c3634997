-- Single flight: become the leader for a cache key, or learn who is.
-- Time is in milliseconds in this script.
--
-- KEYS[1]  the flight lock (string), hash-tagged {<namespace>}.
-- ARGV[1]  this request's token ("<random>:s" when the leader streams, ":n" when not).
-- ARGV[2]  lock TTL in ms; the leader refreshes it while it works, so a crashed leader's
--          lock expires and its followers stop waiting.
--
-- Returns {1, token} when this request is now the leader, {0, holder's token} otherwise.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, ARGV[1]}
end
return {0, redis.call('GET', KEYS[1]) or ''}
