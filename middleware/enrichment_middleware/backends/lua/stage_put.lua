-- Write a stage: drop some fields, set others, expire the whole hash, in one step.
-- KEYS: the stage hash.  ARGV: TTL in ms, how many fields to drop, their names, then
-- name, value pairs to set.  Reply: every field name after.
local drop = tonumber(ARGV[2])
if drop > 0 then redis.call('HDEL', KEYS[1], unpack(ARGV, 3, 2 + drop)) end
if #ARGV > 2 + drop then redis.call('HSET', KEYS[1], unpack(ARGV, 3 + drop)) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return redis.call('HKEYS', KEYS[1])
