-- Run several primitives as one atomic step, all or nothing (Backend.all_or_nothing).
-- lua_scripts.all_or_nothing_source puts before this ``local steps = {}`` and one
-- ``steps[name] = function(KEYS, ARGV) ... end`` per primitive, its script's text.
-- KEYS: every step's keys, in order.  ARGV: the step count, how many steps from the
-- first have their keys saved (up to the last whose condition is not 'any': the effects
-- after it always go, so a room's long lanes are never copied), then per step its
-- primitive, its condition, how many keys, how many arguments, and the arguments.
-- Reply: {0, reply, ...} when every step's reply met its condition; {i} when
-- step i's did not, every key a step named put back as it was (DUMP and
-- RESTORE), so the store is as if nothing ran.  A step may write only its own
-- KEYS, but for the last (window_admit names its counters in the script).  A step
-- that fails with an error puts back what was saved, and the error is the reply.
-- The conditions are backends/base.py's CONDITIONS, on the same numbers.
local conditions = {
  any = function(r, a) return true end,
  granted = function(r, a) return r ~= false and r ~= nil end,
  admitted = function(r, a) return r[1] == 1 end,
  not_paused = function(r, a) return r[5] == 0 and ((not r[2]) or tonumber(r[2]) <= tonumber(r[1])) end,
  closed = function(r, a)
    if not r[2] then return true end
    local status = cjson.decode(r[2]).status
    return status == nil or status == 'closed'
  end,
  unchanged_by_success = function(r, a)
    if not r[2] then return true end
    local state = cjson.decode(r[2])
    return (state.status == nil or state.status == 'closed') and tonumber(state.failures or 0) == 0
  end,
  within_wait = function(r, a) return tonumber(r[1]) - tonumber(r[2]) <= tonumber(a[3]) end,
  due_now = function(r, a) return tonumber(r[1]) - tonumber(r[2]) <= 0 end,
}
local saved = {}
local function keep(key)
  if saved[key] ~= nil then return end
  local dump = redis.call('DUMP', key)
  if dump then saved[key] = {dump, redis.call('PTTL', key)} else saved[key] = false end
end
local function put_back()
  for key, was in pairs(saved) do
    if was then
      -- PTTL -1: no expiry (RESTORE's 0); 0: in its last millisecond, which RESTORE's 0 would
      -- make for ever, so 1.
      local ttl = was[2]
      if ttl < 0 then ttl = 0 elseif ttl == 0 then ttl = 1 end
      redis.call('RESTORE', key, ttl, was[1], 'REPLACE')
    else
      redis.call('DEL', key)
    end
  end
end
local replies = {0}
local saving = tonumber(ARGV[2])
local k, a = 1, 3
for i = 1, tonumber(ARGV[1]) do
  local name, condition = ARGV[a], ARGV[a + 1]
  local nkeys, nargs = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  a = a + 4
  local keys, args = {}, {}
  for j = 1, nkeys do
    keys[j] = KEYS[k]
    if i <= saving then keep(KEYS[k]) end
    k = k + 1
  end
  for j = 1, nargs do
    args[j] = ARGV[a]
    a = a + 1
  end
  local ran, reply = pcall(steps[name], keys, args)
  if not ran then
    -- An error half way (say, out of memory): what ran before is put back too.
    put_back()
    return redis.error_reply(tostring(reply))
  end
  if not conditions[condition](reply, args) then
    put_back()
    return {i}
  end
  replies[i + 1] = reply
end
return replies
