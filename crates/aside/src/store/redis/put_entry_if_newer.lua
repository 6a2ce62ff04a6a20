-- Writes an entry only if ARGV[3] is above the highest version written to
-- it this way, kept in KEYS[2] (which outlives the entry), revoking any
-- lease in flight as put_entry does.
-- KEYS[1]: the entry. KEYS[2]: its write mark. ARGV[1]: value. ARGV[2]:
-- TTL in ms. ARGV[3]: the version (decimal u64). ARGV[4]: the mark's TTL
-- in ms. ARGV[5]: the channel on which to publish the key if readers wait
-- (w), or ''.
-- Returns 1 written, 0 refused (the same or a newer version came first).
-- `above(a, b)` comes from version_above.lua, prepended.
local mark = redis.call('GET', KEYS[2])
if mark and not above(ARGV[3], mark) then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local waited = redis.call('TYPE', KEYS[1]).ok == 'hash' and redis.call('HEXISTS', KEYS[1], 'w') == 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if waited and ARGV[5] ~= '' then
  -- pcall: a user without channel rights must not fail the write above.
  redis.pcall('PUBLISH', ARGV[5], KEYS[1])
end
return 1
