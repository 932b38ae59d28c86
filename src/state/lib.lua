-- Shared helpers (prepended to every Frenly script).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%.0f', n)
end

-- A bucket ring in a hash (field = bucket number, value = count): the same
-- semantics as network::ratelimit::Counter. Returns the newest bucket, the
-- counts by bucket, and the total over the k + 1 newest buckets; deletes the
-- buckets that left the window.
local function ring(key, bucket_ms, k, now)
  local cur = math.floor(now / bucket_ms)
  local all = redis.call('HGETALL', key)
  -- time never goes back: a bucket newer than "now" is the newest
  for i = 1, #all, 2 do
    local b = tonumber(all[i])
    if b > cur then cur = b end
  end
  local counts, total = {}, 0
  for i = 1, #all, 2 do
    local b, c = tonumber(all[i]), tonumber(all[i + 1])
    if b < cur - k then
      redis.call('HDEL', key, all[i])
    else
      counts[b] = c
      total = total + c
    end
  end
  return cur, counts, total
end

-- ms from now until the total drops to at most target (oldest first).
local function ms_until(cur, counts, total, k, bucket_ms, now, target)
  for j = 0, k do
    if total <= target then break end
    total = total - (counts[cur - k + j] or 0)
    if total <= target then
      local ms = (cur + j + 1) * bucket_ms - now
      if ms < 0 then ms = 0 end
      return ms
    end
  end
  return 0
end

-- {limit, remaining, reset seconds}
local function info(cur, counts, total, k, bucket_ms, now, limit)
  local remaining = limit - total
  if remaining < 0 then remaining = 0 end
  local target = math.min(total, limit) - 1
  if target < 0 then target = 0 end
  local ms = ms_until(cur, counts, total, k, bucket_ms, now, target)
  local reset = math.ceil(ms / 1000)
  if reset < 1 then reset = 1 end
  return {limit, remaining, reset}
end

-- The sliding-window rate limit on a ring: only admitted requests count.
-- Returns {tag, limit, remaining, reset}: tag 0 admitted, 1 limited.
local function rate(key, limit, bucket_ms, k, now)
  local cur, counts, total = ring(key, bucket_ms, k, now)
  if total >= limit then
    local i = info(cur, counts, total, k, bucket_ms, now, limit)
    return {1, i[1], i[2], i[3]}
  end
  redis.call('HINCRBY', key, int(cur), 1)
  redis.call('PEXPIRE', key, int((k + 1) * bucket_ms))
  counts[cur] = (counts[cur] or 0) + 1
  local i = info(cur, counts, total + 1, k, bucket_ms, now, limit)
  return {0, i[1], i[2], i[3]}
end

-- Ban: fixed (replaces an active ban) or escalating (no-op while banned).
-- Returns {until_ms, created_ms, offences} or false.
local function ban(bankey, offkey, fixed, secs, cap, reason, memory_ms, now)
  if fixed == 0 and redis.call('EXISTS', bankey) == 1 then
    return false
  end
  local off = tonumber(redis.call('GET', offkey) or '0') + 1
  if fixed == 0 then
    local base = math.max(secs, 1)
    local shift = math.min(off - 1, 40)
    secs = math.min(base * (2 ^ shift), math.max(cap, base))
  end
  local ms = secs * 1000
  local till = now + ms
  redis.call('HSET', bankey, 'until', int(till), 'reason', reason,
    'created', int(now), 'offences', int(off))
  redis.call('PEXPIRE', bankey, int(ms))
  redis.call('SET', offkey, int(off), 'PX', int(ms + memory_ms))
  return {till, now, off}
end
