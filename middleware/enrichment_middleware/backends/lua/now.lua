-- Included by every script that needs the time: the server's clock, in
-- epoch seconds with microseconds.  Times go back to Redis as '%.6f' strings:
-- Lua would print a number with 14 significant digits, a tenth of a millisecond.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function at(seconds) return string.format('%.6f', seconds) end
