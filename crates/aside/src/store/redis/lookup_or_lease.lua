-- Looks an entry up and grants a lease when it has no current value and no
-- live lease. KEYS[1]: the entry (a hash: v current value, o stale copy,
-- t lease token, e lease deadline in server milliseconds). ARGV[1]: token.
-- ARGV[2]: lease TTL in ms. A busy answer marks the entry (w) so that the
-- lease's end is published to the readers now waiting for it; a new grant
-- clears the mark, which belonged to the lease before.
-- Returns {1, value} hit, {2, stale-or-false} busy, {3, stale-or-false} granted.
local h = redis.call('HMGET', KEYS[1], 'v', 'o', 't', 'e', 'w')
local value, stale, token, deadline, waited = h[1], h[2], h[3], h[4], h[5]
if value then
  return {1, value}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if token and tonumber(deadline) and tonumber(deadline) > now_ms then
  if not waited then
    redis.call('HSET', KEYS[1], 'w', '1')
  end
  return {2, stale}
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'e', now_ms + tonumber(ARGV[2]))
if waited then
  redis.call('HDEL', KEYS[1], 'w')
end
if not stale then
  -- A lease alone lives only as long as the lease.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {3, stale}
