-- Removes an entry of either family, revoking any lease in flight, and
-- raises its write mark to ARGV[1] unless the mark is at or above it: a
-- versioned write of an older row that lands later is refused.
-- KEYS[1]: the entry. KEYS[2]: its write mark. ARGV[1]: the version
-- (decimal u64). ARGV[2]: the mark's TTL in ms. ARGV[3]: the channel on
-- which to publish the key if readers wait for its lease (w), or ''.
-- `above(a, b)` comes from version_above.lua, prepended.
local mark = redis.call('GET', KEYS[2])
if not mark or above(ARGV[1], mark) then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
local waited = redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HEXISTS', KEYS[1], 'w') == 1
redis.call('DEL', KEYS[1])
if waited and ARGV[3] ~= '' then
  -- pcall: a user without channel rights must not fail the delete above.
  redis.pcall('PUBLISH', ARGV[3], KEYS[1])
end
return 1
