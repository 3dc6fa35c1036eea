-- Look at a stage: its field names, and the values of the fields asked for.
-- KEYS: the stage hash.  ARGV: the fields wanted.  Reply: {names, values} (a value false when absent).
local values = {}
if #ARGV > 0 then values = redis.call('HMGET', KEYS[1], unpack(ARGV)) end
return {redis.call('HKEYS', KEYS[1]), values}
