-- Open or lengthen a pause; it never ends earlier because someone asked for less.
-- KEYS: pause hash.  ARGV: seconds, reason, kept in ms.  Reply: {opened, until}.
-- include: now.lua
local wanted = now + tonumber(ARGV[1])
local current = redis.call('HGET', KEYS[1], 'until')
local opened, ends = 0, current
if (not current) or tonumber(current) <= now then
  opened, ends = 1, at(wanted)
  redis.call('HSET', KEYS[1], 'until', ends, 'since', at(now), 'reason', ARGV[2])
elseif wanted > tonumber(current) then
  ends = at(wanted)
  redis.call('HSET', KEYS[1], 'until', ends, 'reason', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(ends) - now) * 1000) + tonumber(ARGV[3]))
return {opened, ends}
