-- Token buckets and spend budgets: take `cost` from every bucket and reserve `amount` in
-- every budget, or touch none of them.
-- Time is in microseconds in this script; levels are in units (requests or tokens);
-- money is in integer nano-dollars (USD x 10^9).
--
-- KEYS[i]   nb bucket hashes {level, ts}, then nd budget hashes {spent, settled, alerted,
--           r:<reservation id>...}; all keys share one {tenant} hash tag.
-- ARGV[1]   max_wait_ms: 0 = deny when any bucket is short; > 0 = when the longest wait
--           is within it, debit anyway (the level goes negative: a reservation of future
--           refill) and return the wait, so the caller sleeps once instead of polling.
-- ARGV[2]   now in microseconds, or "" to use redis TIME (tests pin time with it).
-- ARGV[3i..3i+2] for bucket i (from 1): per_minute, capacity, cost (integers).
-- then for budget j (from 1), 4 each: limit, amount, expire_at_ms, reservation id.
--           nd = #ARGV - 2 - 3 * #KEYS (so a call without budgets reads as it always did).
--
-- Decided in this order, so the answer names what will not pass by waiting first:
--   -3 amount > a budget's whole limit | -1 cost > a bucket's capacity (neither ever fits)
--   -2 a budget is spent: spent + amount > limit (for amount 0, a cache hit under
--      limit_cache_hits: spent >= limit); budgets never wait
--    0 a bucket is short beyond max_wait_ms | 2 allowed after wait_ms | 1 allowed
--
-- Returns integers: {status, wait_ms, decider, level_1, reset_ms_1, ..., spent_1, ...}
--   decider index of the key that decided a denial (0 when allowed): a bucket (1..nb) or
--           a budget (nb + j)
--   level_i units left after this call (floored; may be negative), reset_ms_i time until
--           bucket i is full again.
--   spent_j nano-dollars spent and reserved in budget j after this call.
-- A reservation is kept as the field r:<id> = amount, so adjust.lua settles it exactly
-- once (and a release sent after an ambiguous failure is harmless).
-- Every bucket written gets a PEXPIRE of its time to refill fully (+1s): an expired
-- bucket is a full one, so idle tenants leave nothing behind. Every budget written gets a
-- PEXPIREAT of its window's end plus a margin.

local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local max_wait_ms = tonumber(ARGV[1])
local nd = #ARGV - 2 - 3 * #KEYS
local n = #KEYS - nd
local levels, rates, caps, costs = {}, {}, {}, {}
local spent, limits, amounts = {}, {}, {}
local status, wait_ms, decider = 1, 0, 0

for j = 1, nd do
  local base = 2 + 3 * n + 4 * (j - 1)
  limits[j], amounts[j] = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  spent[j] = tonumber(redis.call('HGET', KEYS[n + j], 'spent') or '0')
  if status == 1 and amounts[j] > limits[j] then status, decider = -3, n + j end
end

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
  if status == 1 and cost > cap then
    status, decider = -1, i
  elseif status == 1 and cost > level then
    local wait = math.ceil((cost - level) / rate / 1000)
    if wait > wait_ms then wait_ms, decider = wait, i end
  end
end

if status == 1 then
  for j = 1, nd do
    local over = spent[j] + amounts[j] > limits[j] or (amounts[j] == 0 and spent[j] >= limits[j])
    if status == 1 and over then status, decider, wait_ms = -2, n + j, 0 end
  end
end

if status == 1 and wait_ms > 0 then
  if wait_ms <= max_wait_ms then status = 2 else status = 0 end
end
if status >= 1 then decider = 0 end

local out = {status, wait_ms, decider}
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
for j = 1, nd do
  local base = 2 + 3 * n + 4 * (j - 1)
  local key = KEYS[n + j]
  if status >= 1 and amounts[j] ~= 0 then
    spent[j] = redis.call('HINCRBY', key, 'spent', amounts[j])
    redis.call('HSET', key, 'r:' .. ARGV[base + 4], amounts[j])
    redis.call('PEXPIREAT', key, ARGV[base + 3])
  end
  out[#out + 1] = spent[j]
end
return out
