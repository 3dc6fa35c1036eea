-- Take a permit (a lease) if fewer than the limit are held.
-- KEYS: leases, cap.  ARGV: holder, limit, lease_s.  Reply: the grant time, or nil.
-- The set itself expires a minute after its last lease would, so an
-- abandoned semaphore leaves nothing behind.
-- include: now.lua
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', at(now))
local limit = tonumber(ARGV[2])
local cap = redis.call('GET', KEYS[2])
if cap then limit = math.min(limit, tonumber(cap)) end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= limit then
  return false
end
redis.call('ZADD', KEYS[1], at(now + tonumber(ARGV[3])), ARGV[1])
local ttl_ms = math.ceil(tonumber(ARGV[3]) * 1000) + 60000
if redis.call('PTTL', KEYS[1]) < ttl_ms then redis.call('PEXPIRE', KEYS[1], ttl_ms) end
return at(now)
