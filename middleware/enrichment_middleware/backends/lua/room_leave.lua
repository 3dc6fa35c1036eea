-- Give up a member's seat (if held under its token) and hand the free seats on; count the call
-- its lane made, if it made one, in the window of window_s that holds now; remember for left_s
-- that it left, so that a stale copy of it ends (early: it left before its job finished, so a copy
-- holding the token it left with is its own delivery again, not a stale one).
-- KEYS: as room.lua.
-- ARGV: member ('' for none), token, seats, handoff_s, lane ('': no call), window_s, left_s, early ('1').
-- Reply: {{member, lane, token, payload}, ...} handed.
-- include: room.lua
expire()
if ARGV[1] ~= '' and redis.call('HGET', TOKENS, ARGV[1]) == ARGV[2] then
  redis.call('ZREM', SEATS, ARGV[1])
  redis.call('HDEL', TOKENS, ARGV[1])
  forget(ARGV[1])
  redis.call('ZADD', LEFT, at(now + tonumber(ARGV[7])), ARGV[1])
  redis.call('HSET', LEFT_TOKENS, ARGV[1], (ARGV[8] == '1' and 'e' or '') .. ARGV[2])
  if ARGV[5] ~= '' then count_call(ARGV[5], tonumber(ARGV[6])) end
end
return fill(tonumber(ARGV[3]), tonumber(ARGV[4]))
