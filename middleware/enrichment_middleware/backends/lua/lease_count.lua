-- Leases held now.
-- KEYS: leases.
-- include: now.lua
return redis.call('ZCOUNT', KEYS[1], '(' .. at(now), '+inf')
