-- Appends one write to a write-back log unless the log is at its bound.
-- KEYS[1]: the stream. ARGV[1]: the bound (entries). ARGV[2..]: the
-- entry's field and value pairs.
-- Returns {1, id} appended, or {0, length} refused: the log holds `length`
-- entries, at or past the bound (back-pressure: nothing was written).
-- XLEN is O(1), and the check and the append are one step, so concurrent
-- writers never push the log past its bound between them.
local len = redis.call('XLEN', KEYS[1])
if len >= tonumber(ARGV[1]) then
  return {0, len}
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
return {1, id}
