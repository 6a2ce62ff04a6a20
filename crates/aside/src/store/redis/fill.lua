-- Writes a loaded value only if the caller's lease is still the entry's.
-- KEYS[1]: the entry. ARGV[1]: token. ARGV[2]: value. ARGV[3]: TTL in ms.
-- ARGV[4]: the channel on which to publish the key if readers wait (w), or ''.
-- Returns 1 stored, 0 refused (revoked by an invalidation, or replaced).
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
local waited = redis.call('HEXISTS', KEYS[1], 'w') == 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if waited and ARGV[4] ~= '' then
  -- pcall: a user without channel rights must not fail the write above.
  redis.pcall('PUBLISH', ARGV[4], KEYS[1])
end
return 1
