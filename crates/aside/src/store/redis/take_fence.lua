-- Fences an entry for a linearizable update: unless another update's fence
-- (a live lease whose token has its top bit set) holds it, removes the
-- entry (value, stale copy, any reader's lease: revoked) and leases it to
-- ARGV[1]. KEYS[1]: the entry. ARGV[1]: the fence token. ARGV[2]: its TTL
-- in ms. ARGV[3]: the channel on which to publish the key if readers wait
-- (w), or ''. Returns 1 fenced, 0 held by another fence. A fence of
-- ARGV[1] itself is taken again: the request was resent after its reply
-- was lost (redis-rs's cluster client does), and must not find itself.
-- Tokens are decimal u64s: one with its top bit set is at least 2^63,
-- compared as a string (length, then digits) because Lua's numbers are
-- doubles.
local function is_fence(token)
  return token and (#token == 20 or (#token == 19 and token >= '9223372036854775808'))
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local waited = false
if redis.call('TYPE', KEYS[1]).ok == 'hash' then
  local h = redis.call('HMGET', KEYS[1], 't', 'e', 'w')
  if is_fence(h[1]) and h[1] ~= ARGV[1] and tonumber(h[2]) and tonumber(h[2]) > now_ms then
    return 0
  end
  waited = h[3]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 't', ARGV[1], 'e', now_ms + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if waited and ARGV[3] ~= '' then
  -- The readers waiting on a revoked lease look again (and wait on the fence).
  redis.pcall('PUBLISH', ARGV[3], KEYS[1])
end
return 1
