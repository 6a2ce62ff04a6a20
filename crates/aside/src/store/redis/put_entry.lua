-- Writes an entry unconditionally, revoking any lease in flight.
-- KEYS[1]: the entry. ARGV[1]: value. ARGV[2]: TTL in ms. ARGV[3]: the
-- channel on which to publish the key if readers wait (w), or ''.
local waited = redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HEXISTS', KEYS[1], 'w') == 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if waited and ARGV[3] ~= '' then
  -- pcall: a user without channel rights must not fail the write above.
  redis.pcall('PUBLISH', ARGV[3], KEYS[1])
end
return 1
