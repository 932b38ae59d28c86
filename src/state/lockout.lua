-- Finish one admitted login attempt. KEYS: triples (failure counter, lock,
-- attempts in flight) for the account and, optionally, the address. ARGV:
-- max failures, window ms, outcome (0 abandoned, 1 failed, 2 succeeded).
-- Returns one flag per triple: 1 when this failure locked it. A success
-- clears the account's failures (never the address's).
local out = {}
local max, window, outcome = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
for i = 1, #KEYS, 3 do
  if redis.call('DECR', KEYS[i + 2]) <= 0 then redis.call('DEL', KEYS[i + 2]) end
  local locked = 0
  if outcome == 1 and redis.call('EXISTS', KEYS[i + 1]) == 0 then
    local c = redis.call('INCR', KEYS[i])
    if c == 1 then redis.call('PEXPIRE', KEYS[i], window) end
    if c >= max then
      redis.call('SET', KEYS[i + 1], '1', 'PX', window)
      redis.call('DEL', KEYS[i])
      locked = 1
    end
  elseif outcome == 2 and i == 1 then
    redis.call('DEL', KEYS[i])
  end
  out[#out + 1] = locked
end
return out
