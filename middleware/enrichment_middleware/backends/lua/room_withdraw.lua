-- Take a member out of its lane if it still waits there (an enter whose write the replicas did
-- not confirm: its message is put back instead, so the room must not send it too).
-- KEYS: as room.lua.  ARGV: member.  Reply: 1 if withdrawn, else 0 (handed a seat meanwhile).
-- include: room.lua
local entry = redis.call('HGET', ENTRIES, ARGV[1])
if not entry or redis.call('HGET', TOKENS, ARGV[1]) then return 0 end
local lane = lane_of(entry)
redis.call('ZREM', QUEUE, entry)
if redis.call('HINCRBY', COUNTS, lane, -1) <= 0 then redis.call('HDEL', COUNTS, lane) end
redis.call('HINCRBY', META, 'waiting', -1)
forget(ARGV[1])
return 1
