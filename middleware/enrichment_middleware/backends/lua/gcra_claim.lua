-- Start on a slot reserved earlier, or reserve again.
-- KEYS: schedule.  ARGV: interval_s, burst, wait_s, slot_at.  Reply: {start_at, now}.
-- include: gcra.lua
local slot = tonumber(ARGV[4])
local begin = tonumber(at(math.max(slot, start - tau)))
if begin - now <= wait then
  keep(tat, math.max(start, begin, now) + interval)
  return {at(begin), at(now)}
end
if begin == slot then return {at(slot), at(now)} end
return reserve()
