-- A counter over a window starting at its first hit, reset when it reaches
-- the threshold (IDS suspicion scores). KEYS: counter. ARGV: window ms,
-- threshold. Returns the count including this hit.
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if c >= tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end
return c
