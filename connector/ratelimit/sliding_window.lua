-- Cost-weighted rolling-window limiter: take each limit's cost from EVERY limit, or from none.
--
-- Per limit i: KEYS[2i-1] is a sorted set of time buckets (member = bucket id, score = bucket
-- end in microseconds) and KEYS[2i] a hash {bucket id -> cost, "total" -> live sum}.
-- A grant is booked in the bucket that contains "now" and counts until bucket end + window,
-- i.e. a little longer than its true age: the limiter can only be stricter, never looser.
-- ARGV per limit: capacity, window_us, granularity_us, cost (a per-request limit gets 1).
-- Returns 0 when granted, else the microseconds until every limit could grant (nothing booked).
-- The clock is Redis' own (TIME), so the clocks of worker hosts do not matter.

local nlimits = #KEYS / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local wait = 0
local totals = {}
for i = 1, nlimits do
  local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
  local capacity = tonumber(ARGV[4 * i - 3])
  local window = tonumber(ARGV[4 * i - 2])
  local cost = tonumber(ARGV[4 * i])
  -- expire buckets whose grants are out of the window
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - window)
  local total = tonumber(redis.call('HGET', hkey, 'total') or '0')
  if #expired > 0 then
    local costs = redis.call('HMGET', hkey, unpack(expired))
    for j = 1, #expired do
      total = total - tonumber(costs[j] or '0')
    end
    redis.call('HDEL', hkey, unpack(expired))
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - window)
    if total < 0 then total = 0 end
    redis.call('HSET', hkey, 'total', total)
  end
  totals[i] = total
  local excess = total + cost - capacity
  if excess > 0 then
    -- walk the oldest buckets until enough cost has left the window
    local freed, until_free = 0, 0
    local oldest = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    for j = 1, #oldest, 2 do
      freed = freed + tonumber(redis.call('HGET', hkey, oldest[j]) or '0')
      until_free = tonumber(oldest[j + 1]) + window - now
      if freed >= excess then break end
    end
    if until_free < 1 then until_free = 1 end
    if until_free > wait then wait = until_free end
  end
end

if wait > 0 then
  return wait
end

for i = 1, nlimits do
  local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = tonumber(ARGV[4 * i - 2])
  local granularity = tonumber(ARGV[4 * i - 1])
  local cost = tonumber(ARGV[4 * i])
  local bucket_end = (math.floor(now / granularity) + 1) * granularity
  local member = string.format('%.0f', bucket_end)
  redis.call('ZADD', zkey, bucket_end, member)
  redis.call('HINCRBY', hkey, member, cost)
  redis.call('HSET', hkey, 'total', totals[i] + cost)
  -- idle keys vanish on their own once nothing in them can count any more
  local ttl_ms = math.ceil((window + granularity) / 1000) + 1000
  redis.call('PEXPIRE', zkey, ttl_ms)
  redis.call('PEXPIRE', hkey, ttl_ms)
end
return 0
