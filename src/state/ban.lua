-- Set a ban. KEYS: ban, offences. ARGV: fixed (1|0), seconds or base,
-- cap, reason, offence memory ms. Returns {until, created, offences} or nil.
local r = ban(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5]), now_ms())
if r then return r end
return false
