-- Included (not run alone): `--@include flight_end.lua` in flight_release.lua and store.lua
-- is replaced by this file when the script is loaded (proxy.store.connection.script), so
-- the two ways a flight ends cannot drift apart.
-- Time is in milliseconds (linger).
--
-- end_flight: compare-and-delete the flight lock (only its leader's token may), end the
-- chunk stream for late streaming followers (when one exists), wake every follower.
-- Returns true when the lock was the leader's and is released.
local function end_flight(lock, stream, token, channel, outcome, linger)
  local ours = redis.call('GET', lock) == token
  if ours then
    redis.call('DEL', lock)
  end
  if redis.call('EXISTS', stream) == 1 then
    redis.call('XADD', stream, 'MAXLEN', '~', '100000', '*', 'end', outcome)
    redis.call('PEXPIRE', stream, linger)
  end
  redis.call('PUBLISH', channel, outcome)
  return ours
end
