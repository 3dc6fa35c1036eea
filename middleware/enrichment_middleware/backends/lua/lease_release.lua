-- Give a permit back and wake one waiter.
-- KEYS: leases, wake list.  ARGV: holder, tokens kept, token TTL in ms.
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], 'x')
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
