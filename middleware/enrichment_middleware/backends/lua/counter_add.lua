-- Add to a counter.
-- KEYS: the counter.  ARGV: amount, TTL in ms.
-- A refund (amount < 0) never creates the counter nor takes it below 0: after
-- a restart that lost it, giving a request back must not admit an extra one.
local amount = tonumber(ARGV[1])
if amount < 0 then
  local current = redis.call('GET', KEYS[1])
  if not current then return 0 end
  current = tonumber(current)
  if current + amount < 0 then amount = -current end
  if amount == 0 then return current end
end
local value = redis.call('INCRBY', KEYS[1], amount)
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return value
