-- ARGV: P, worker, lease_ms, max_in_flight, max_attempts, policy
-- Returns {id, rec, seq, attempt} | 'FULL' (in-flight bound reached) | 'EMPTY' (nothing pending)
local worker, lease_ms, max_in_flight = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
reap(now, 100, tonumber(ARGV[5]), ARGV[6])
local top = redis.call('ZRANGE', P .. ':pending', 0, 0, 'WITHSCORES')
if #top == 0 then return 'EMPTY' end
local id = top[1]
local k = tkey(id)
-- The bound admits groups: once one member of a group was acquired, the others (and retries)
-- may be acquired beyond it, else a group larger than the free slots could never finish.
local g = gkey(redis.call('HGET', k, 'gk'))
if redis.call('HGET', g, 'adm') ~= '1' then
  local c = redis.call('HMGET', CNT, 'running', 'done')
  if tonumber(c[1] or 0) + tonumber(c[2] or 0) >= max_in_flight then return 'FULL' end
  redis.call('HSET', g, 'adm', '1')
end
redis.call('ZREM', P .. ':pending', id)
set_status(id, 'pending', 'running')
redis.call('HSET', k, 'worker', worker, 'lease', now + lease_ms, 'acq_at', now)
redis.call('ZADD', P .. ':leases', now + lease_ms, id)
local seq = tonumber(top[2])
local maxacq = tonumber(redis.call('HGET', CNT, 'max_acq_seq') or '-1')
if seq > maxacq then redis.call('HSET', CNT, 'max_acq_seq', seq) end
local v = redis.call('HMGET', k, 'rec', 'attempt')
return {id, v[1], seq, tonumber(v[2])}
