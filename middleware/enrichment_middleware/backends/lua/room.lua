-- Included by the room scripts: the keys of one room and its shared steps.
-- KEYS: seats (sorted set member -> lapses at), tokens (hash member -> seat token),
-- queue (sorted set of "lane \0 sequence \0 member", all scores 0: by lane, then arrival),
-- entries (hash member -> its queue entry, from its wait until it leaves),
-- payloads (hash member -> payload, likewise), passes (hash lane -> pass),
-- weights (hash lane -> weight), counts (hash lane -> members waiting),
-- meta (hash: vtime, the pass last served; seq, the last sequence number; waiting, the
-- members in the queue: what lua/room_seat.lua reads instead of the queue),
-- handed (hash member -> token: handed a seat, not arrived yet), left (sorted set member ->
-- until: jobs that left, so that a stale copy of one ends instead of running again), left-tokens
-- (hash member -> the token it left with, 'e' before it when it left early: a copy holding an older
-- one is stale, and so is one holding that token unless it left early: then it is the same delivery
-- again, redelivered after its worker died before the job finished, and runs).
-- include: now.lua
local SEATS, TOKENS, QUEUE, ENTRIES, PAYLOADS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local PASSES, WEIGHTS, COUNTS, META, HANDED, LEFT = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local LEFT_TOKENS = KEYS[12]
local SEP = '\0'

-- Whether lane name a sorts before b, byte by byte (as Python compares them: Lua's < follows the
-- collation of the server's locale).
local function before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function number(value) return string.format('%.17g', value) end

-- The calls of each lane in the window of window_s that holds now: a hash per window, named here
-- from the server's time (as window_admit names its counters), in the room's hash tag.
local function calls_key(window_s)
  local sec = tonumber(t[1])
  return META .. ':calls:' .. string.format('%d', sec - (sec % window_s))
end
local function count_call(lane, window_s)
  local key = calls_key(window_s)
  redis.call('HINCRBY', key, lane, 1)
  redis.call('EXPIRE', key, window_s * 2)
end
local function next_seq() return redis.call('HINCRBY', META, 'seq', 1) end
local function lane_of(entry) return string.sub(entry, 1, string.find(entry, SEP, 1, true) - 1) end
-- An entry is lane, SEP, sixteen digits, SEP, member.
local function member_of(entry) return string.sub(entry, string.find(entry, SEP, 1, true) + 18) end
local function stride(lane) return 1 / tonumber(redis.call('HGET', WEIGHTS, lane) or '1') end
local function pass_of(lane) return tonumber(redis.call('HGET', PASSES, lane) or '0') end

-- What the room keeps of a member besides its seat.
local function forget(member)
  redis.call('HDEL', ENTRIES, member)
  redis.call('HDEL', PAYLOADS, member)
  redis.call('HDEL', HANDED, member)
end

-- Queue ``entry`` in its lane. A lane's pass is when its next job is due in virtual time; a lane
-- nobody waited in is due one stride after the pass last served, no sooner (no banked credit).
local function wait_in(lane, entry)
  if tonumber(redis.call('HGET', COUNTS, lane) or '0') <= 0 then
    local due = tonumber(redis.call('HGET', META, 'vtime') or '0') + stride(lane)
    if pass_of(lane) < due then redis.call('HSET', PASSES, lane, number(due)) end
  end
  redis.call('ZADD', QUEUE, 0, entry)
  redis.call('HINCRBY', COUNTS, lane, 1)
  redis.call('HINCRBY', META, 'waiting', 1)
end

-- Drop lapsed seats and old tombstones. A member handed a seat that never arrived waits again at
-- the head of its lane (its entry keeps its sequence number), its lane's turn given back; one that
-- arrived is forgotten: the broker holds its message (its worker died), or it is done (its leave
-- was lost).
local function expire()
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', LEFT, '-inf', at(now))) do
    redis.call('HDEL', LEFT_TOKENS, member)
  end
  redis.call('ZREMRANGEBYSCORE', LEFT, '-inf', at(now))
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', SEATS, '-inf', at(now))) do
    redis.call('ZREM', SEATS, member)
    redis.call('HDEL', TOKENS, member)
    local entry = redis.call('HGET', ENTRIES, member)
    if entry and redis.call('HEXISTS', HANDED, member) == 1 then
      redis.call('HDEL', HANDED, member)
      local lane = lane_of(entry)
      redis.call('HSET', PASSES, lane, number(pass_of(lane) - stride(lane)))
      wait_in(lane, entry)
    else
      forget(member)
    end
  end
end

-- Hand the free seats to the heads of the lanes with the smallest pass (stride scheduling; a tie
-- goes to the heavier lane, then by name); then drop the lanes nobody waits in whose pass the room
-- has caught up with (they would start there).
local function fill(limit, handoff_s)
  local handed = {}
  while redis.call('ZCARD', SEATS) < limit do
    local counts = redis.call('HGETALL', COUNTS)
    local lane, pass, step = nil, nil, nil
    for i = 1, #counts, 2 do
      if tonumber(counts[i + 1]) > 0 then
        local p, s = pass_of(counts[i]), stride(counts[i])
        if lane == nil or p < pass or (p == pass and (s < step or (s == step and before(counts[i], lane)))) then
          lane, pass, step = counts[i], p, s
        end
      end
    end
    if lane == nil then break end
    local entry = redis.call('ZRANGEBYLEX', QUEUE, '[' .. lane .. SEP, '(' .. lane .. '\1', 'LIMIT', 0, 1)[1]
    if entry == nil then
      redis.call('HDEL', COUNTS, lane)  -- counted but not queued: cannot happen, but must not loop
    else
      redis.call('ZREM', QUEUE, entry)
      if redis.call('HINCRBY', COUNTS, lane, -1) <= 0 then redis.call('HDEL', COUNTS, lane) end
      redis.call('HINCRBY', META, 'waiting', -1)
      redis.call('HSET', META, 'vtime', number(pass))
      redis.call('HSET', PASSES, lane, number(pass + stride(lane)))
      local member = member_of(entry)
      local token = tostring(next_seq())
      redis.call('ZADD', SEATS, at(now + handoff_s), member)
      redis.call('HSET', TOKENS, member, token)
      redis.call('HSET', HANDED, member, token)
      table.insert(handed, {member, lane, token, redis.call('HGET', PAYLOADS, member) or ''})
    end
  end
  local vtime = tonumber(redis.call('HGET', META, 'vtime') or '0')
  local busy = {}  -- the lanes of members handed a seat: a lapse puts them back, with their weight
  for _, member in ipairs(redis.call('HKEYS', HANDED)) do
    local entry = redis.call('HGET', ENTRIES, member)
    if entry then busy[lane_of(entry)] = true end
  end
  local passes = redis.call('HGETALL', PASSES)
  for i = 1, #passes, 2 do
    if tonumber(passes[i + 1]) <= vtime and not busy[passes[i]] and redis.call('HEXISTS', COUNTS, passes[i]) == 0 then
      redis.call('HDEL', PASSES, passes[i])
      redis.call('HDEL', WEIGHTS, passes[i])
    end
  end
  return handed
end
