-- Read a versioned state and the server's clock.
-- KEYS: state hash.  Returns {version, value, seconds, microseconds}: the state and
-- the server's TIME in one round trip (a breaker's admission needs both).
local state = redis.call('HMGET', KEYS[1], 'version', 'value')
local t = redis.call('TIME')
return {state[1] or false, state[2] or false, t[1], t[2]}
