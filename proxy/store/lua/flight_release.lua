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
--@include flight_end.lua
if end_flight(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4]) then return 1 end
return 0
