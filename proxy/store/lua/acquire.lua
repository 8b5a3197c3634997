-- Token buckets and spend budgets: take `cost` from every bucket and reserve `amount` in
-- every budget, or touch none of them.
-- Time is in microseconds in this script; levels are in units (requests or tokens);
-- money is in integer nano-dollars (USD x 10^9).
--
-- KEYS[i]   nb bucket hashes {level, ts}, then nd budget hashes {spent, alerted}; all keys
--           share one {tenant} hash tag.
-- ARGV[1]   max_wait_ms: 0 = deny when any bucket is short; > 0 = when the longest wait
--           is within it, debit anyway (the level goes negative: a reservation of future
--           refill) and return the wait, so the caller sleeps once instead of polling.
-- ARGV[2]   now in microseconds, or "" to use redis TIME (tests pin time with it).
-- ARGV[3i..3i+2] for bucket i (from 1): per_minute, capacity, cost (integers).
-- then for budget j (from 1), 4 each: limit, amount, expire_at_ms, alert (0 = none).
--           nd = #ARGV - 2 - 3 * #KEYS (so a call without budgets reads as it always did).
--
-- Budgets are checked first and never wait: a spent budget stays spent until its window
-- ends. Budget j refuses when spent + amount > limit (or, for amount 0, a cache hit under
-- limit_cache_hits, when spent >= limit).
--
-- Returns integers: {status, wait_ms, decider, level_1, reset_ms_1, ..., spent_1, alerted_1, ...}
--   status  1 allowed | 2 allowed after wait_ms | 0 denied | -1 cost > capacity (never fits)
--           -2 a budget is spent | -3 amount > a budget's whole limit (never fits)
--   decider index of the key that decided a denial (0 when allowed): a bucket (1..nb) or
--           a budget (nb + j)
--   level_i units left after this call (floored; may be negative), reset_ms_i time until
--           bucket i is full again.
--   spent_j nano-dollars spent and reserved in budget j after this call; alerted_j 1 when
--           this call took it to its alert threshold first in its window (HSETNX alerted).
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
local status, wait_ms, decider = 1, 0, 0

local spent, alerted = {}, {}
for j = 1, nd do
  local base = 2 + 3 * n + 4 * (j - 1)
  local limit, amount = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  local now_spent = tonumber(redis.call('HGET', KEYS[n + j], 'spent') or '0')
  spent[j], alerted[j] = now_spent, 0
  if status == 1 then
    if amount > limit then
      status, decider = -3, n + j
    elseif now_spent + amount > limit or (amount == 0 and now_spent >= limit) then
      status, decider = -2, n + j
    end
  end
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
  if cost > cap then
    if status >= 0 then status, decider = -1, i end
  elseif status == 1 and cost > level then
    local wait = math.ceil((cost - level) / rate / 1000)
    if wait > wait_ms then wait_ms, decider = wait, i end
  end
end

if status == 1 and wait_ms > 0 then
  if wait_ms <= max_wait_ms then status = 2 else status = 0 end
end

local out = {status, wait_ms, 0}
if status <= 0 then out[3] = decider end
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
  if status >= 1 then
    local amount, alert = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 4])
    if amount ~= 0 then
      spent[j] = redis.call('HINCRBY', key, 'spent', amount)
      redis.call('PEXPIREAT', key, ARGV[base + 3])
    end
    if alert > 0 and spent[j] >= alert and redis.call('HSETNX', key, 'alerted', 1) == 1 then
      alerted[j] = 1
      redis.call('PEXPIREAT', key, ARGV[base + 3])
    end
  end
  out[#out + 1] = spent[j]
  out[#out + 1] = alerted[j]
end
return out
