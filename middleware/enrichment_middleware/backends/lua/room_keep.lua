-- Renew a member's seat if it holds it, live, under its token.
-- KEYS: as room.lua.  ARGV: member, token, seat_s.  Reply: 1 if renewed, else 0.
-- include: room.lua
if redis.call('HGET', TOKENS, ARGV[1]) ~= ARGV[2] then return 0 end
local lapses = redis.call('ZSCORE', SEATS, ARGV[1])
if not lapses or tonumber(lapses) <= now then return 0 end
redis.call('ZADD', SEATS, at(now + tonumber(ARGV[3])), ARGV[1])
return 1
