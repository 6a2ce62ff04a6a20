-- Grants a refresh lease on an entry that still has its value (early
-- refresh, or a value past its logical expiry): Value(v) -> Value(v)+Leased(t).
-- KEYS[1]: the entry. ARGV[1]: token. ARGV[2]: lease TTL in ms.
-- Returns 1 granted, 0 not (no current value, only a stale copy, or a live lease).
local h = redis.call('HMGET', KEYS[1], 'v', 't', 'e')
if not h[1] then
  return 0
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if h[2] and tonumber(h[3]) and tonumber(h[3]) > now_ms then
  return 0
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'e', now_ms + tonumber(ARGV[2]))
-- The entry must outlive its lease, or the refresh would be refused.
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
