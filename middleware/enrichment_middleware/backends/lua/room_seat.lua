-- Seat a member at once, if that needs none of the queue (Rooms.room_seat): the step of a room
-- in an all-or-nothing admission, whose keys are few and small.
-- KEYS: seats, tokens, meta, handed (as room.lua).  ARGV: member, token, seats, seat_s.
-- Reply: the seat's token, or false (then room_enter decides).
-- include: now.lua
local SEATS, TOKENS, META, HANDED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local member, token = ARGV[1], ARGV[2]
local held = redis.call('HGET', TOKENS, member)
if token ~= '' then
  -- Only its own live seat; a stale token is for room_enter to judge.
  local live = redis.call('ZSCORE', SEATS, member)
  if held ~= token or not live or tonumber(live) <= now then return false end
  redis.call('ZADD', SEATS, at(now + tonumber(ARGV[4])), member)
  redis.call('HDEL', HANDED, member)  -- arrived: its entry and payload go when it leaves
  return held
end
if held or tonumber(redis.call('HGET', META, 'waiting') or '0') > 0 then return false end
if redis.call('ZCOUNT', SEATS, '(' .. at(now), '+inf') >= tonumber(ARGV[3]) then return false end
local mine = tostring(redis.call('HINCRBY', META, 'seq', 1))
redis.call('ZADD', SEATS, at(now + tonumber(ARGV[4])), member)
redis.call('HSET', TOKENS, member, mine)
return mine
