-- Gives a lease back without filling, if ARGV[1] still holds it. A stale
-- value stays; an entry that was only a lease disappears. KEYS[1]: the entry.
if redis.call('HGET', KEYS[1], 't') ~= ARGV[1] then
  return 0
end
if redis.call('HEXISTS', KEYS[1], 'v') == 1 then
  redis.call('HDEL', KEYS[1], 't', 'e')
else
  redis.call('DEL', KEYS[1])
end
return 1
