-- Reserve the next pacing slot.
-- KEYS: schedule.  ARGV: interval_s, burst, wait_s.  Reply: {slot_at, now}.
-- include: gcra.lua
return reserve()
