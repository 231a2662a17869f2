-- Cost-weighted rolling-window limiter: take each limit's cost from EVERY limit, or from none.
--
-- Per limit i: KEYS[2i-1] is a sorted set of time buckets (member = bucket id, score = bucket
-- end in microseconds) and KEYS[2i] a hash {bucket id -> cost, "total" -> live sum}.
-- A grant is booked in the bucket that contains "now" and counts until bucket end + window,
-- i.e. a little longer than its true age: the limiter can only be stricter, never looser.
-- The last KEY is the key's pause (a string with a TTL): while it lives nothing is granted.
-- ARGV[1] is the mode, then per limit: capacity (less any reserve), window_us,
-- granularity_us, cost (a per-request limit gets 1).
-- Mode "acquire" returns minus the grant's time (microseconds, Redis clock) when granted, else
-- the microseconds until every limit could grant and the pause is over (nothing booked).
-- Mode "usage" writes nothing and returns, per limit, the live cost and the microseconds
-- until its cost would fit (0 when it fits now), then the pause left:
-- {used_1, wait_1, used_2, wait_2, ..., pause_us}.
-- Mode "align" takes, per limit, the cost the remote itself counts ("cost" = its count) and
-- books the difference when the remote counts more than we do (never less): returns 0.
-- Mode "settle" takes, per limit, a grant's time as "cost", and moves one unit of that grant
-- from the bucket it was booked in to the bucket of now: the request was answered, so the
-- remote saw it at the latest now, and it counts a full window from then.
-- Mode "pause" (ARGV[2] = milliseconds, no limits, KEYS = the pause alone) extends the pause
-- to at least that long.
-- The KEY before the pause is the usage history, a hash {"<slot start s>:c" -> cost,
-- "<slot start s>:n" -> acquisitions}; the last three ARGV are its slot and span in seconds
-- and the acquisition's cost. Only a granted "acquire" books there (align and settle correct
-- the window's counters, not what was asked for); slots older than the span are dropped when
-- a new slot begins, and the hash expires a span after its last grant.
-- The clock is Redis' own (TIME), so the clocks of worker hosts do not matter.

local mode = ARGV[1]
local pause_key = KEYS[#KEYS]
if mode == 'pause' then
  local ms = tonumber(ARGV[2])
  if redis.call('PTTL', pause_key) < ms then
    redis.call('SET', pause_key, '1', 'PX', ms)
  end
  return 0
end
local nlimits = (#KEYS - 2) / 2
local history = KEYS[#KEYS - 1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local pause_us = math.max(0, redis.call('PTTL', pause_key)) * 1000

local function arg(i, k)
  return tonumber(ARGV[1 + 4 * (i - 1) + k])
end

if mode == 'settle' then
  for i = 1, nlimits do
    local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
    local window, granularity, granted = arg(i, 2), arg(i, 3), arg(i, 4)
    local old = string.format('%.0f', (math.floor(granted / granularity) + 1) * granularity)
    local bucket_end = (math.floor(now / granularity) + 1) * granularity
    local member = string.format('%.0f', bucket_end)
    if old ~= member then
      if tonumber(redis.call('HGET', hkey, old) or '0') > 0 then
        redis.call('HINCRBY', hkey, old, -1)
      else
        -- its bucket is gone already: the unit comes back into the live total
        redis.call('HINCRBY', hkey, 'total', 1)
      end
      redis.call('ZADD', zkey, bucket_end, member)
      redis.call('HINCRBY', hkey, member, 1)
      local ttl_ms = math.ceil((window + granularity) / 1000) + 1000
      redis.call('PEXPIRE', zkey, ttl_ms)
      redis.call('PEXPIRE', hkey, ttl_ms)
    end
  end
  return 0
end

local wait = 0
local totals = {}
local waits = {}
for i = 1, nlimits do
  local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
  local capacity = arg(i, 1)
  local window = arg(i, 2)
  local cost = arg(i, 4)
  local horizon = now - window
  -- buckets whose grants are out of the window no longer count (and are expired on acquire)
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', horizon)
  local total = tonumber(redis.call('HGET', hkey, 'total') or '0')
  if #expired > 0 then
    local costs = redis.call('HMGET', hkey, unpack(expired))
    for j = 1, #expired do
      total = total - tonumber(costs[j] or '0')
    end
    if total < 0 then total = 0 end
    if mode ~= 'usage' then
      redis.call('HDEL', hkey, unpack(expired))
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', horizon)
      redis.call('HSET', hkey, 'total', total)
    end
  end
  totals[i] = total
  waits[i] = 0
  if mode == 'align' then
    -- "cost" is what the remote counts: book the part of it we do not count ourselves
    cost = cost - total
    if cost < 0 then cost = 0 end
  end
  local excess = total + cost - capacity
  if mode == 'align' then excess = 0 end
  if excess > 0 then
    -- walk the oldest live buckets until enough cost has left the window
    local freed, until_free = 0, 0
    local oldest = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    for j = 1, #oldest, 2 do
      local bucket_end = tonumber(oldest[j + 1])
      -- only "usage" still sees expired buckets here
      if bucket_end > horizon then
        freed = freed + tonumber(redis.call('HGET', hkey, oldest[j]) or '0')
        until_free = bucket_end + window - now
        if freed >= excess then break end
      end
    end
    if until_free < 1 then until_free = 1 end
    waits[i] = until_free
    if until_free > wait then wait = until_free end
  end
end

if mode == 'usage' then
  local answer = {}
  for i = 1, nlimits do
    answer[2 * i - 1] = totals[i]
    answer[2 * i] = waits[i]
  end
  answer[2 * nlimits + 1] = pause_us
  return answer
end

if mode == 'acquire' and pause_us > wait then wait = pause_us end
if wait > 0 then
  return wait
end

for i = 1, nlimits do
  local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = arg(i, 2)
  local granularity = arg(i, 3)
  local cost = arg(i, 4)
  if mode == 'align' then
    cost = cost - totals[i]
    if cost < 0 then cost = 0 end
  end
  if cost > 0 then
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
end
if mode == 'acquire' then
  local slot_s = tonumber(ARGV[2 + 4 * nlimits])
  local span_s = tonumber(ARGV[3 + 4 * nlimits])
  local cost = tonumber(ARGV[4 + 4 * nlimits])
  local now_s = tonumber(t[1])
  local start = now_s - now_s % slot_s
  if redis.call('HINCRBY', history, start .. ':n', 1) == 1 then
    -- a new slot: forget the ones that left the history
    local names = redis.call('HKEYS', history)
    for j = 1, #names do
      local slot = tonumber(string.match(names[j], '^(%d+):'))
      if slot and slot + slot_s <= now_s - span_s then
        redis.call('HDEL', history, names[j])
      end
    end
  end
  redis.call('HINCRBY', history, start .. ':c', cost)
  redis.call('EXPIRE', history, span_s + slot_s)
  return -now
end
return 0
