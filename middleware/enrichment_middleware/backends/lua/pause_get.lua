-- Read a pause and a hold.
-- KEYS: pause hash, hold hash.  Reply: {now, until, since, reason, held, since, reason, fingerprint}.
-- include: now.lua
local p = redis.call('HMGET', KEYS[1], 'until', 'since', 'reason')
local h = redis.call('HMGET', KEYS[2], 'since', 'reason', 'fingerprint')
return {at(now), p[1], p[2], p[3], redis.call('EXISTS', KEYS[2]), h[1], h[2], h[3]}
