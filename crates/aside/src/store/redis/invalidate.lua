-- Removes an entry of either family, revoking any lease in flight.
-- KEYS[1]: the entry. ARGV[1]: the channel on which to publish the key if
-- readers wait for its lease (w), or ''.
local waited = redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HEXISTS', KEYS[1], 'w') == 1
redis.call('DEL', KEYS[1])
if waited and ARGV[1] ~= '' then
  -- pcall: a user without channel rights must not fail the delete above.
  redis.pcall('PUBLISH', ARGV[1], KEYS[1])
end
return 1
