-- Hand a permit from one holder to another.
-- KEYS: leases, cap, wake list.  ARGV: from holder, to holder, limit, lease_s,
-- tokens kept, token TTL in ms.  Reply: the grant time, or nil.
-- Release and acquire in one step: the count never moves, so no other
-- process can take the permit in between, nor can the fleet go over.  When
-- the new holder gets nothing (a lowered cap), the release wakes a waiter.
-- include: now.lua
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at(now))
local held = redis.call('ZREM', KEYS[1], ARGV[1]) == 1
local limit = tonumber(ARGV[3])
local cap = redis.call('GET', KEYS[2])
if cap then limit = math.min(limit, tonumber(cap)) end
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], at(now + tonumber(ARGV[4])), ARGV[2])
  local ttl_ms = math.ceil(tonumber(ARGV[4]) * 1000) + 60000
  if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
  return at(now)
end
if held then
  redis.call('LPUSH', KEYS[3], 'x')
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return false
