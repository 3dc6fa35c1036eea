-- Included by the pacing scripts.  Key pacing:<key>: a hash of tat (the next
-- reservation) and start (the earliest next start); it expires a minute after
-- the last slot it reserved.  Times are rounded to the microsecond (at) before
-- they are compared, so the caller, comparing the returned strings, agrees.
-- ARGV: interval_s, burst, wait_s (then the claim's slot).  Defines the
-- state, keep (write it back) and reserve (GCRA's next slot).
-- include: now.lua
now = tonumber(at(now))
local interval, wait = tonumber(ARGV[1]), tonumber(ARGV[3])
local tau = (tonumber(ARGV[2]) - 1) * interval
local state = redis.call('HMGET', KEYS[1], 'tat', 'start')
local tat, start = tonumber(state[1] or '0'), tonumber(state[2] or '0')
local function keep(new_tat, new_start)
  redis.call('HSET', KEYS[1], 'tat', at(new_tat), 'start', at(new_start))
  redis.call('PEXPIRE', KEYS[1], math.ceil((math.max(new_tat, new_start) - now) * 1000) + 60000)
end
local function reserve()
  local base = math.max(tat, start, now)
  local slot = tonumber(at(math.max(now, base - tau)))
  local new_start = start
  if slot - now <= wait then new_start = math.max(start, slot) + interval end
  keep(base + interval, new_start)
  return {at(slot), at(now)}
end
