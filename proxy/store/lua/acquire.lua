-- Token buckets: take `cost` from every bucket, or from none of them.
-- Time is in microseconds in this script; levels are in units (requests or tokens).
--
-- KEYS[i]   one hash per bucket {level, ts}; all keys share one {tenant} hash tag.
-- ARGV[1]   max_wait_ms: 0 = deny when any bucket is short; > 0 = when the longest wait
--           is within it, debit anyway (the level goes negative: a reservation of future
--           refill) and return the wait, so the caller sleeps once instead of polling.
-- ARGV[2]   now in microseconds, or "" to use redis TIME (tests pin time with it).
-- ARGV[3i..3i+2] for bucket i (from 1): per_minute, capacity, cost (integers).
--
-- Returns integers: {status, wait_ms, bucket, level_1, reset_ms_1, level_2, ...}
--   status  1 allowed | 2 allowed after wait_ms | 0 denied | -1 cost > capacity (never fits)
--   bucket  index of the bucket that decided a denial (0 when allowed)
--   level_i units left after this call (floored; may be negative), reset_ms_i time until
--           bucket i is full again.
-- Every bucket written gets a PEXPIRE of its time to refill fully (+1s): an expired
-- bucket is a full one, so idle tenants leave nothing behind.

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local max_wait_ms = tonumber(ARGV[1])
local n = #KEYS
local levels, rates, caps, costs = {}, {}, {}, {}
local status, wait_ms, decider = 1, 0, 0

for i = 1, n do
  local base = 3 * i
  local rate = tonumber(ARGV[base]) / 60000000
  local cap = tonumber(ARGV[base + 1])
  local cost = tonumber(ARGV[base + 2])
  local state = redis.call('HMGET', KEYS[i], 'level', 'ts')
  local level = cap
  if state[1] then
    level = math.min(cap, tonumber(state[1]) + (now - tonumber(state[2])) * rate)
  end
  levels[i], rates[i], caps[i], costs[i] = level, rate, cap, cost
  if cost > cap then
    if status ~= -1 then status, decider = -1, i end
  elseif status ~= -1 and cost > level then
    local wait = math.ceil((cost - level) / rate / 1000)
    if wait > wait_ms then wait_ms, decider = wait, i end
  end
end

if status == 1 and wait_ms > 0 then
  if wait_ms <= max_wait_ms then status = 2 else status = 0 end
end

local out = {status, wait_ms, 0}
if status == 0 or status == -1 then out[3] = decider end
for i = 1, n do
  local level = levels[i]
  if status >= 1 then
    level = level - costs[i]
    redis.call('HSET', KEYS[i], 'level', string.format('%.17g', level), 'ts', string.format('%d', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((caps[i] - level) / rates[i] / 1000) + 1000)
  end
  out[#out + 1] = math.floor(level)
  out[#out + 1] = math.ceil((caps[i] - level) / rates[i] / 1000)
end
return out
