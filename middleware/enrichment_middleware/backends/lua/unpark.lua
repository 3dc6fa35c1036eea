-- Forget a claimed member.
-- KEYS: due set, payload hash, token hash.  ARGV: member, token.
-- Only the parking that was claimed is forgotten: a member parked again since
-- (a new token) stays.
if (redis.call('HGET', KEYS[3], ARGV[1]) or '') ~= ARGV[2] then return 0 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
