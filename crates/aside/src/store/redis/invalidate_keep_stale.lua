-- Invalidates an entry but keeps its value as a stale copy for ARGV[1] ms.
-- Any lease in flight is revoked. KEYS[1]: the entry. ARGV[2]: the channel
-- on which to publish the key if readers wait (w), or ''.
-- A stale copy lives in field o, never in v: v holds a current value only,
-- so a hit is one HGET of v (see RedisStore::peek_fresh).
local value = false
local waited = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local h = redis.call('HMGET', KEYS[1], 'v', 'o', 'w')
  value = h[1] or h[2]
  waited = h[3]
end
redis.call('DEL', KEYS[1])
if value then
  redis.call('HSET', KEYS[1], 'o', value)
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if waited and ARGV[2] ~= '' then
  -- pcall: a user without channel rights must not fail the write above.
  redis.pcall('PUBLISH', ARGV[2], KEYS[1])
end
return 1
