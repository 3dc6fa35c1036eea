-- Park a member until a due time.
-- KEYS: due set, payload hash, token hash.  ARGV: member, payload, delay_s, token.
-- include: now.lua
redis.call('ZADD', KEYS[1], at(now + tonumber(ARGV[3])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
