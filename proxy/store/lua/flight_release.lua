-- Single flight: the leader is done; wake every follower.
-- Time is in milliseconds in this script.
--
-- KEYS[1]  the flight lock (string); KEYS[2] the flight's chunk stream (may not exist).
-- ARGV[1]  the leader's token: only its owner may release the lock.
-- ARGV[2]  the pub/sub channel followers listen on.
-- ARGV[3]  the outcome: "done" (the answer is in the cache) or "failed" (it is not).
-- ARGV[4]  how long (ms) the chunk stream lingers for late streaming followers.
--
-- Returns 1 when the lock was ours and is released, 0 when it had already expired.
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours then
  redis.call('DEL', KEYS[1])
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', '100000', '*', 'end', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
if ours then return 1 end
return 0
