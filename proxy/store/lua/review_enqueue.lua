-- Index a review item in its namespace's queue, keeping the queue bounded.
-- Time is in milliseconds in this script.
-- KEYS[1] the queue (sorted set: digest -> when queued)   KEYS[2] the dropped counter
--   (both carry the {<namespace>} hash tag: one slot)
-- ARGV[1] now_ms   ARGV[2] digest   ARGV[3] max_items   ARGV[4] retention_ms
-- Returns how many items were dropped (oldest first) to stay within max_items.
local now, retention = tonumber(ARGV[1]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[2])
-- Items older than the retention have expired; their index entries go too.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - retention)
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
local dropped = 0
if over > 0 then
  dropped = #redis.call('ZPOPMIN', KEYS[1], over) / 2
  redis.call('INCRBY', KEYS[2], dropped)
end
redis.call('PEXPIRE', KEYS[1], retention)
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('PEXPIRE', KEYS[2], retention)
end
return dropped
