-- Writes an entry unconditionally, revoking any lease in flight.
-- KEYS[1]: the entry. ARGV[1]: value. ARGV[2]: TTL in ms.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
