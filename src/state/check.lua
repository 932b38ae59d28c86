-- The hot path: ban check, burst counter (+ escalating burst ban), sliding
-- window rate limit, revocation epoch and (optionally) one JWT id, in one
-- atomic call.
-- KEYS: ban, offences, burst ring, rate ring, epoch, [revoked jti]
-- ARGV: rate limit, rate bucket ms, burst limit, burst bucket ms,
--       ddos base s, ddos cap s, offence memory ms, buckets k,
--       [now ms: tests only; production uses Redis's clock]
-- Returns {tag, a, b, c, epoch, jti_revoked}:
--   0 allowed {limit, remaining, reset}; 1 limited {same};
--   2 banned {retry_after s}; 3 burst ban {until, created, offences}
local now = now_ms()
if ARGV[9] then now = tonumber(ARGV[9]) end
local epoch = tonumber(redis.call('GET', KEYS[5]) or '0')
local jti = 0
if #KEYS >= 6 then jti = redis.call('EXISTS', KEYS[6]) end
local rate_limit, rate_b = tonumber(ARGV[1]), tonumber(ARGV[2])
local burst_limit, burst_b = tonumber(ARGV[3]), tonumber(ARGV[4])
local k = tonumber(ARGV[8])

local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  return {2, math.max(math.ceil(pttl / 1000), 1), 0, 0, epoch, jti}
end

-- burst: every arrival counts
local bcur, _, btotal = ring(KEYS[3], burst_b, k, now)
redis.call('HINCRBY', KEYS[3], int(bcur), 1)
redis.call('PEXPIRE', KEYS[3], int((k + 1) * burst_b))
if btotal + 1 > burst_limit then
  redis.call('DEL', KEYS[3])
  local r = ban(KEYS[1], KEYS[2], 0, tonumber(ARGV[5]), tonumber(ARGV[6]), 'ddos',
    tonumber(ARGV[7]), now)
  if r then
    return {3, r[1], r[2], r[3], epoch, jti}
  end
  return {2, 1, 0, 0, epoch, jti}
end

-- rate: only admitted requests count
local r = rate(KEYS[4], rate_limit, rate_b, k, now)
return {r[1], r[2], r[3], r[4], epoch, jti}
