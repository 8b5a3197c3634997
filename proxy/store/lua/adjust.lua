-- Token buckets and spend budgets: settle a reservation once the real cost is known.
-- Time is in microseconds in this script; levels are in units (requests or tokens);
-- money is in integer nano-dollars (USD x 10^9).
--
-- KEYS[i]   nb bucket hashes {level, ts}, then nd budget hashes {spent, settled, alerted,
--           r:<reservation id>...}; all keys share one {tenant} hash tag.
-- ARGV[1]   now in microseconds, or "" to use redis TIME.
-- ARGV[3i-1..3i+1] for bucket i (from 1): per_minute, capacity, delta (integers):
--           delta > 0 refunds units (capped at capacity), delta < 0 debits them; a debit
--           may take the level below zero, which delays the tenant's next request: honest
--           accounting for answers longer than reserved.
--           then for budget j (from 1), 5 each: reservation id, delta, expire_at_ms,
--           alert (0 = none), actual: `delta` is added to the spend (actual - reserved;
--           negative when the answer cost less) and `actual` to the settled spend, once:
--           only while the reservation's field r:<id> exists (deleted here), so a retry
--           or a release after an ambiguous failure never counts twice.
--           nd = (#ARGV - 1 - 3 * #KEYS) / 2.
--
-- Returns {level_1, level_2, ..., spent_1, alerted_1, ...}: levels floored; alerted_j 1
-- when this settlement took budget j's settled spend (real costs, never reservations) to
-- its alert threshold first in its window (HSETNX alerted). Every bucket written gets a
-- PEXPIRE of its time to refill fully (+1s), every budget a PEXPIREAT of its window's end
-- plus a margin.

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local nd = (#ARGV - 1 - 3 * #KEYS) / 2
local n = #KEYS - nd
local out = {}
for i = 1, n do
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
for j = 1, nd do
  local base = 1 + 3 * n + 5 * (j - 1)
  local key = KEYS[n + j]
  local alerted = 0
  if redis.call('HDEL', key, 'r:' .. ARGV[base + 1]) == 1 then
    redis.call('HINCRBY', key, 'spent', ARGV[base + 2])
    local settled = redis.call('HINCRBY', key, 'settled', ARGV[base + 5])
    redis.call('PEXPIREAT', key, ARGV[base + 3])
    local alert = tonumber(ARGV[base + 4])
    if alert > 0 and settled >= alert and redis.call('HSETNX', key, 'alerted', 1) == 1 then
      alerted = 1
    end
  end
  out[#out + 1] = tonumber(redis.call('HGET', key, 'spent') or '0')
  out[#out + 1] = alerted
end
return out
