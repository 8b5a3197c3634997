-- Decide a pending review item. The first decision wins: this check-and-set is the claim
-- that stops two reviewers deciding one item twice.
-- Time is in milliseconds in this script.
-- KEYS: as review_mark.lua (entry, its request, item, answer under review, its request,
--   each flag's copy)
-- ARGV[1] decision: "approve" | "reject" | "pin"   ARGV[2] now_ms   ARGV[3] who decides
-- ARGV[4] retention_ms   ARGV[5] pin_ms (how long a pinned answer stays)
-- ARGV[6] ttl_ms for an approved answer put back when its item has no TTL recorded
-- ARGV[7] L1 channel ("" for none)
-- ARGV[8] when the answer under review refers to something the provider deletes (its
--         earliest `expires_at`, in ms; 0 for none): nothing is put back beyond it
-- Returns {outcome, detail}: "missing" (no such item), "decided" (already; detail = its
-- state), "gone" (pin: the answer under review no longer exists), "ok" (detail = new state)
local item = KEYS[3]
local state = redis.call('HGET', item, 'state')
if not state then
  return {'missing', ''}
end
if state ~= 'pending' then
  return {'decided', state}
end
local decision, now = ARGV[1], tonumber(ARGV[2])
local expires = tonumber(ARGV[8] or '0') or 0

-- `ttl` capped by the answer's own expiry; 0 or less when it has expired.
local function capped(ttl)
  if expires > 0 and expires - now < ttl then
    return expires - now
  end
  return ttl
end

-- Puts the answer under review back as the cache entry, for `ttl` ms.
local function put_back(ttl)
  local answer = redis.call('GET', KEYS[4])
  if not answer then
    return false
  end
  redis.call('SET', KEYS[1], answer, 'PX', ttl)
  local request = redis.call('GET', KEYS[5])
  if request then
    redis.call('SET', KEYS[2], request, 'PX', ttl)
  end
  return true
end

local new_state
if decision == 'reject' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6])
  new_state = 'rejected'
elseif decision == 'approve' then
  -- A quarantined answer is served again, unless a fresh answer took its place meanwhile.
  if redis.call('HEXISTS', item, 'quarantined') == 1 and redis.call('EXISTS', KEYS[1]) == 0 then
    -- Put back until the entry would have expired had it not been flagged, no longer.
    local deadline = tonumber(redis.call('HGET', item, 'entry_deadline_ms') or '0') or 0
    local ttl = tonumber(ARGV[6])
    if deadline > 0 then
      ttl = deadline - now
    end
    ttl = capped(ttl)
    if ttl > 0 then
      put_back(ttl)
    end
  end
  new_state = 'approved'
elseif decision == 'pin' then
  -- The verified answer (not a fresher one stored since) is served for pin_ms.
  local ttl = capped(tonumber(ARGV[5]))
  if ttl <= 0 or not put_back(ttl) then
    return {'gone', ''}
  end
  redis.call('HSET', item, 'pinned_until_ms', now + ttl)
  new_state = 'pinned'
else
  return redis.error_reply('unknown decision ' .. decision)
end
redis.call('HDEL', item, 'quarantined')
redis.call('HSET', item, 'state', new_state, 'decided_by', ARGV[3], 'decided_ms', now)
-- A pinned item lives as long as its pin: lua/store.lua reads it to keep the pinned answer.
local keep = tonumber(ARGV[4])
if new_state == 'pinned' and tonumber(ARGV[5]) > keep then
  keep = tonumber(ARGV[5])
end
redis.call('PEXPIRE', item, keep)
if ARGV[7] ~= '' then
  redis.call('PUBLISH', ARGV[7], 'k ' .. KEYS[1])
end
return {'ok', new_state}
