-- Extends a lease its holder still holds. KEYS[1]: the entry. ARGV[1]:
-- token. ARGV[2]: lease TTL in ms. Returns 1 extended, 0 not (revoked,
-- replaced or run out).
local h = redis.call('HMGET', KEYS[1], 't', 'e')
if h[1] ~= ARGV[1] then
  return 0
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if not tonumber(h[2]) or tonumber(h[2]) <= now_ms then
  return 0
end
redis.call('HSET', KEYS[1], 'e', now_ms + tonumber(ARGV[2]))
-- The entry must outlive its lease (a lease alone lives as long as the lease).
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
