-- Admit a member to a seat of the room, or to its lane (see Rooms.room_enter).
-- KEYS: as room.lua.  ARGV: lane, member, payload, token, weight, seats, seat_s, handoff_s.
-- Reply: {status, token, {{member, lane, token, payload}, ...} handed}.
-- include: room.lua
local lane, member, payload, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, seat_s, handoff_s = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
expire()
local status, mine = 'waiting', ''
local held = redis.call('HGET', TOKENS, member)
local entry = redis.call('HGET', ENTRIES, member)
if held and (held == token or not entry) then
  -- Its seat: handed to this copy, or one it arrived at before (a redelivered copy).
  redis.call('ZADD', SEATS, at(now + seat_s), member)
  redis.call('HDEL', ENTRIES, member)
  redis.call('HDEL', PAYLOADS, member)
  status, mine = 'seated', held
elseif entry then
  status = 'present'
else
  redis.call('HSET', WEIGHTS, lane, ARGV[5])
  if redis.call('ZCARD', QUEUE) == 0 and redis.call('ZCARD', SEATS) < limit then
    mine = tostring(next_seq())
    redis.call('ZADD', SEATS, at(now + seat_s), member)
    redis.call('HSET', TOKENS, member, mine)
    status = 'seated'
  else
    local queued = lane .. SEP .. string.format('%016d', next_seq()) .. SEP .. member
    redis.call('HSET', ENTRIES, member, queued)
    redis.call('HSET', PAYLOADS, member, payload)
    wait_in(lane, queued)
  end
end
return {status, mine, fill(limit, handoff_s)}
