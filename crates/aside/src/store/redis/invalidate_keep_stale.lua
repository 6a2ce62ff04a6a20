-- Invalidates an entry but keeps its value, flagged stale, for ARGV[1] ms.
-- Any lease in flight is revoked. KEYS[1]: the entry. ARGV[2]: the channel
-- on which to publish the key if readers wait (w), or ''.
local value = false
local waited = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  value = redis.call('HGET', KEYS[1], 'v')
  waited = redis.call('HEXISTS', KEYS[1], 'w') == 1
end
redis.call('DEL', KEYS[1])
if value then
  redis.call('HSET', KEYS[1], 'v', value, 's', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
if waited and ARGV[2] ~= '' then
  -- pcall: a user without channel rights must not fail the write above.
  redis.pcall('PUBLISH', ARGV[2], KEYS[1])
end
return 1
