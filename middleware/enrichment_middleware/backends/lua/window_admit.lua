-- Admit one call against a quota window's counters, or not, in one step.
-- KEYS: the counters' prefix (<namespace>:counter:{<key>}: the counters
-- named here share its hash tag, so a cluster routes the script to their slot).
-- ARGV: window_s, TTL in ms, n, then n names, n limits, n increments, n priors.
-- Reply: admitted (0/1), window start, now, then the n values.
-- include: now.lua
local sec = tonumber(t[1])
local window = tonumber(ARGV[1])
local start = sec - (sec % window)
local n = tonumber(ARGV[3])
local keys, values = {}, {}
for i = 1, n do
  keys[i] = KEYS[1] .. ':' .. string.format('%d', start) .. ':' .. ARGV[3 + i]
  values[i] = tonumber(redis.call('GET', keys[i]) or '0')
end
local admitted = 1
for i = 1, n do
  local limit = tonumber(ARGV[3 + n + i])
  if limit >= 0 and values[i] >= limit then admitted = 0 end
  -- A cost counter (prior > 0) must have its mean per admission left (base.mean_cost).
  local prior = tonumber(ARGV[3 + 3 * n + i])
  if limit >= 0 and prior > 0 then
    local need = prior
    if values[1] > 0 then need = values[i] / values[1] end
    if limit - values[i] < need then admitted = 0 end
  end
end
if admitted == 1 then
  for i = 1, n do
    local increment = tonumber(ARGV[3 + 2 * n + i])
    if increment ~= 0 then
      values[i] = redis.call('INCRBY', keys[i], increment)
      if redis.call('PTTL', keys[i]) == -1 then redis.call('PEXPIRE', keys[i], ARGV[2]) end
    end
  end
end
local reply = {admitted, string.format('%d', start), at(now)}
for i = 1, n do reply[3 + i] = values[i] end
return reply
