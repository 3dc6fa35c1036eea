-- Claim the members that are due.
-- KEYS: due set, payload hash, token hash, orphan counter.  ARGV: limit, claim_s.
-- Reply: {member, payload, token, ...} claimed, then {member, ...} orphans: a
-- member due without a payload is removed and counted, never handed out empty.
-- include: now.lua
local claim_until = at(now + tonumber(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', at(now), 'LIMIT', 0, ARGV[1])
local claimed, orphans = {}, {}
for _, member in ipairs(due) do
  local payload = redis.call('HGET', KEYS[2], member)
  if payload then
    redis.call('ZADD', KEYS[1], claim_until, member)
    table.insert(claimed, member)
    table.insert(claimed, payload)
    table.insert(claimed, redis.call('HGET', KEYS[3], member) or '')
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[3], member)
    redis.call('INCR', KEYS[4])
    table.insert(orphans, member)
  end
end
return {claimed, orphans}
