-- Read a pacing schedule.
-- KEYS: schedule.  Reply: {base, now}.
-- include: now.lua
local state = redis.call('HMGET', KEYS[1], 'tat', 'start')
return {at(math.max(tonumber(state[1] or '0'), tonumber(state[2] or '0'))), at(now)}
