-- Release a hold, or keep one of the same fingerprint.
-- KEYS: hold hash.  ARGV: '1' to keep a hold of the same fingerprint, the fingerprint.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '1' and redis.call('HGET', KEYS[1], 'fingerprint') == ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
