-- Cost-weighted rolling-window limiter: take each limit's cost from EVERY limit, or from none.
--
-- Per limit i: KEYS[2i-1] is a sorted set of time buckets (member = bucket id, score = bucket
-- end in microseconds) and KEYS[2i] a hash {bucket id -> cost, "total" -> live sum}.
-- A grant is booked in the bucket that contains "now" and counts until bucket end + window,
-- i.e. a little longer than its true age: the limiter can only be stricter, never looser.
-- ARGV[1] is the mode, then per limit: capacity, window_us, granularity_us, cost (a
-- per-request limit gets 1).
-- Mode "acquire" returns 0 when granted, else the microseconds until every limit could grant
-- (nothing booked).
-- Mode "usage" writes nothing and returns, per limit, the live cost and the microseconds
-- until its cost would fit (0 when it fits now): {used_1, wait_1, used_2, wait_2, ...}.
-- The last key is the usage history, a hash {"<slot start s>:c" -> cost, "<slot start s>:n"
-- -> acquisitions}; the last three ARGV are its slot and span in seconds and the
-- acquisition's cost. A grant is booked there too; slots older than the span are dropped
-- when a new slot begins, and the hash expires a span after its last grant.
-- The clock is Redis' own (TIME), so the clocks of worker hosts do not matter.

local mode = ARGV[1]
local nlimits = (#KEYS - 1) / 2
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function arg(i, k)
  return tonumber(ARGV[1 + 4 * (i - 1) + k])
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
    if mode == 'acquire' then
      redis.call('HDEL', hkey, unpack(expired))
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', horizon)
      redis.call('HSET', hkey, 'total', total)
    end
  end
  totals[i] = total
  waits[i] = 0
  local excess = total + cost - capacity
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
  return answer
end

if wait > 0 then
  return wait
end

for i = 1, nlimits do
  local zkey, hkey = KEYS[2 * i - 1], KEYS[2 * i]
  local window = arg(i, 2)
  local granularity = arg(i, 3)
  local cost = arg(i, 4)
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

local history = KEYS[#KEYS]
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
return 0
