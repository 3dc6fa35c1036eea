-- Seats held (not lapsed), members waiting by lane, and calls by lane in the window of window_s.
-- KEYS: as room.lua.  ARGV: window_s.  Reply: {seated, {lane, waiting, ...}, {lane, calls, ...}}.
-- include: room.lua
return {
  redis.call('ZCOUNT', SEATS, '(' .. at(now), '+inf'),
  redis.call('HGETALL', COUNTS),
  redis.call('HGETALL', calls_key(tonumber(ARGV[1]))),
}
