-- Prepended to the scripts that compare versions (put_entry_if_newer.lua,
-- invalidate_if_newer.lua). Versions are compared as decimal strings
-- (length, then digits): Lua's numbers are doubles, exact only up to 2^53.
local function above(a, b)
  if #a ~= #b then
    return #a > #b
  end
  return a > b
end
