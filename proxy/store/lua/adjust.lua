-- Token buckets: settle a reservation once the real cost is known.
-- Time is in microseconds in this script; levels are in units (requests or tokens).
--
-- KEYS[i]   one hash per bucket {level, ts}; all keys share one {tenant} hash tag.
-- ARGV[1]   now in microseconds, or "" to use redis TIME.
-- ARGV[3i-1..3i+1] for bucket i (from 1): per_minute, capacity, delta (integers):
--           delta > 0 refunds units (capped at capacity), delta < 0 debits them; a debit
--           may take the level below zero, which delays the tenant's next request: honest
--           accounting for answers longer than reserved.
--
-- Returns {level_1, level_2, ...} floored. Every bucket written gets a PEXPIRE of its time
-- to refill fully (+1s).

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local out = {}
for i = 1, #KEYS do
  local base = 3 * i - 1
  local rate = tonumber(ARGV[base]) / 60000000
  local cap = tonumber(ARGV[base + 1])
  local delta = tonumber(ARGV[base + 2])
  local state = redis.call('HMGET', KEYS[i], 'level', 'ts')
  local level = cap
  if state[1] then
    level = math.min(cap, tonumber(state[1]) + (now - tonumber(state[2])) * rate)
  end
  level = math.min(cap, level + delta)
  redis.call('HSET', KEYS[i], 'level', string.format('%.17g', level), 'ts', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[i], math.ceil((cap - level) / rate / 1000) + 1000)
  out[i] = math.floor(level)
end
return out
