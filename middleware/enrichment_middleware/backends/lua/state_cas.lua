-- Write a versioned state if its version is the expected one.
-- KEYS: state hash.  ARGV: expected version, JSON value.
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', current + 1, 'value', ARGV[2])
return 1
