-- Invalidates an entry but keeps its value, flagged stale, for ARGV[1] ms.
-- Any lease in flight is revoked. KEYS[1]: the entry.
local value = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  value = redis.call('HGET', KEYS[1], 'v')
end
redis.call('DEL', KEYS[1])
if value then
  redis.call('HSET', KEYS[1], 'v', value, 's', '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1
