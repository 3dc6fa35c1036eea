-- Admit a member to a seat of the room, or to its lane (see Rooms.room_enter).
-- KEYS: as room.lua.  ARGV: lane, member, payload, token, weight, seats, seat_s, handoff_s.
-- Reply: {status, token, {{member, lane, token, payload}, ...} handed}.
-- include: room.lua
local lane, member, payload, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit, seat_s, handoff_s = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
expire()
local status, mine = 'waiting', ''
local held = redis.call('HGET', TOKENS, member)
-- The token its job last left with ('e' before it: it left early, before the job finished).
local left = redis.call('HGET', LEFT_TOKENS, member) or '-1'
local left_early = string.sub(left, 1, 1) == 'e'
local left_token = tonumber(left_early and string.sub(left, 2) or left) or -1
if held then
  if token ~= '' and token == held then
    -- Its seat: handed to this copy (it arrives), or kept for it while it was deferred.
    redis.call('ZADD', SEATS, at(now + seat_s), member)
    forget(member)
    status, mine = 'seated', held
  elseif token == '' and redis.call('HEXISTS', HANDED, member) == 0 then
    -- The broker's own copy again (its worker lost the connection): it takes the seat over.
    redis.call('ZADD', SEATS, at(now + seat_s), member)
    status, mine = 'seated', held
  else
    status = 'present'  -- a stale copy, or handed to another copy that has not arrived yet
  end
elseif redis.call('HEXISTS', ENTRIES, member) == 1 then
  status = 'present'  -- waiting in its lane
elseif tonumber(token) and (tonumber(token) < left_token or (tonumber(token) == left_token and not left_early)) then
  -- A stale copy of a job that ran and left (a later seat's token is greater), or a copy of the
  -- finished one. A copy holding the token of a job that left early is that delivery again (its worker
  -- died after leaving, before the job finished): it runs.
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
