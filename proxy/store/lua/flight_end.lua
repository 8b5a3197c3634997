-- Included (not run alone): `--@include flight_end.lua` in flight_release.lua and store.lua
-- is replaced by this file when the script is loaded (proxy.store.connection.script), so
-- the two ways a flight ends cannot drift apart.
-- Time is in milliseconds (linger).
--
-- end_flight: compare-and-delete the flight lock (only its leader's token may), end the
-- chunk stream, wake every follower. The stream of a streaming leader (token ending in
-- ":s") always gets its end entry, created if no chunk came before the end (the leader
-- failed before its first): streaming followers wait in XREAD BLOCK on that stream, not on
-- the channel, and must learn the outcome now, not when lock_ms has passed.
-- Returns true when the lock was the leader's and is released.
local function end_flight(lock, stream, token, channel, outcome, linger)
  local ours = redis.call('GET', lock) == token
  if ours then
    redis.call('DEL', lock)
  end
  if string.sub(token, -2) == ':s' or redis.call('EXISTS', stream) == 1 then
    redis.call('XADD', stream, 'MAXLEN', '~', '100000', '*', 'end', outcome)
    redis.call('PEXPIRE', stream, linger)
  end
  redis.call('PUBLISH', channel, outcome)
  return ours
end
