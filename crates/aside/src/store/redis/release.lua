-- Gives a lease back without filling, if ARGV[1] still holds it. A stale
-- value stays; an entry that was only a lease disappears. KEYS[1]: the entry.
-- ARGV[2]: the channel on which to publish the key if readers wait (w), or ''.
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
local waited = redis.call('HEXISTS', KEYS[1], 'w') == 1
if redis.call('HEXISTS', KEYS[1], 'v') == 1 or redis.call('HEXISTS', KEYS[1], 'o') == 1 then
  redis.call('HDEL', KEYS[1], 't', 'e', 'w')
else
  redis.call('DEL', KEYS[1])
end
if waited and ARGV[2] ~= '' then
  -- pcall: a user without channel rights must not fail the write above.
  redis.pcall('PUBLISH', ARGV[2], KEYS[1])
end
return 1
