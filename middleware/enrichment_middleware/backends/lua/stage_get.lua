-- Read one field of a stage.
-- KEYS: the stage hash.  ARGV: the field.  Reply: its value, or false.
return redis.call('HGET', KEYS[1], ARGV[1])
