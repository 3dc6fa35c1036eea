-- Hold: no calls until released.
-- KEYS: hold hash.  ARGV: reason, fingerprint.  Reply: 1 when newly held.
-- include: now.lua
local new = redis.call('EXISTS', KEYS[1]) == 0
if new then redis.call('HSET', KEYS[1], 'since', at(now)) end
redis.call('HSET', KEYS[1], 'reason', ARGV[1], 'fingerprint', ARGV[2])
if new then return 1 end
return 0
