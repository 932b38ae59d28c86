-- One failed login. KEYS: pairs of (failure counter, lock) for the account
-- and, optionally, the address. ARGV: max failures, window ms.
-- Returns one flag per pair: 1 when this failure locked it.
local out = {}
local max, window = tonumber(ARGV[1]), ARGV[2]
for i = 1, #KEYS, 2 do
  local locked = 0
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    local c = redis.call('INCR', KEYS[i])
    if c == 1 then redis.call('PEXPIRE', KEYS[i], window) end
    if c >= max then
      redis.call('SET', KEYS[i + 1], '1', 'PX', window)
      redis.call('DEL', KEYS[i])
      locked = 1
    end
  end
  out[#out + 1] = locked
end
return out
