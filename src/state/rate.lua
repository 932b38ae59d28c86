-- One sliding-window rate limit on its own (limits.per_identity, keyed by
-- the authenticated user): the same ring and bound as the address limit.
-- KEYS: rate ring. ARGV: limit, bucket ms, buckets k,
--       [now ms: tests only; production uses Redis's clock]
-- Returns {tag, limit, remaining, reset}: tag 0 admitted, 1 limited.
local now = now_ms()
if ARGV[4] then now = tonumber(ARGV[4]) end
return rate(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), now)
