-- ARGV: P, id, gk, rec, worker, lease_ms, session_id. A task recorded as it happens (forge serve:
-- an agent's session opens it): submitted and leased to `worker` in one step, its session bound,
-- exactly as submit + acquire + open_session leave a task, without the queue and in-flight bound.
-- Returns the assigned seq. DUPLICATE if the task id or its group exists: nothing is written.
local id, gk, rec, worker, sid = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7]
if redis.call('EXISTS', tkey(id)) == 1 then return fail_reply('DUPLICATE', 'task id ' .. id .. ' already submitted') end
if redis.call('EXISTS', gkey(gk)) == 1 then return fail_reply('DUPLICATE', 'group ' .. gk .. ' already submitted') end
local bound = redis.call('HGET', P .. ':sess:' .. sid, 't')
if bound then return fail_reply('BADINPUT', 'session ' .. sid .. ' is already bound to task ' .. bound) end
local seq = redis.call('INCRBY', P .. ':seq', 1) - 1
local now = now_ms()
local lease = now + tonumber(ARGV[6])
redis.call('HSET', tkey(id), 'rec', rec, 'seq', seq, 'gk', gk, 'gid', '', 'gsize', 1,
  'status', 'running', 'attempt', 0, 'worker', worker, 'err', '', 'batch', '', 'sub_at', now,
  'acq_at', now, 'lease', lease)
redis.call('ZADD', P .. ':leases', lease, id)
redis.call('ZADD', P .. ':open', seq, id)
redis.call('RPUSH', P .. ':gm:' .. gk, id)
redis.call('HSET', gkey(gk), 'lo', seq, 'hi', seq, 'size', 1, 'adm', '1')
redis.call('HINCRBY', CNT, 'running', 1)
redis.call('HINCRBY', CNT, 'submitted', 1)
local maxacq = tonumber(redis.call('HGET', CNT, 'max_acq_seq') or '-1')
if seq > maxacq then redis.call('HSET', CNT, 'max_acq_seq', seq) end
redis.call('HSET', P .. ':sess:' .. sid, 't', id, 'a', 0)
redis.call('SADD', P .. ':ts:' .. id, sid)
return seq
