-- Admit one login attempt. KEYS: triples (failure counter, lock, attempts
-- in flight) for the account and, optionally, the address. ARGV: max
-- failures, in-flight TTL ms (a crashed instance's attempts expire).
-- Returns one flag per triple: 0 admits, 1 refuses (locked), 2 refuses for
-- now (failures and attempts in flight already reach max: wait). Only when
-- every flag is 0 is each in-flight counter incremented, so no more
-- passwords are checked than failures are allowed, however many arrive at
-- once.
local max, ttl = tonumber(ARGV[1]), ARGV[2]
local out, refused = {}, false
for i = 1, #KEYS, 3 do
  local r = 0
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    r = 1
  elseif tonumber(redis.call('GET', KEYS[i]) or '0') + tonumber(redis.call('GET', KEYS[i + 2]) or '0') >= max then
    r = 2
  end
  if r ~= 0 then refused = true end
  out[#out + 1] = r
end
if not refused then
  for i = 1, #KEYS, 3 do
    redis.call('INCR', KEYS[i + 2])
    redis.call('PEXPIRE', KEYS[i + 2], ttl)
  end
end
return out
