-- ARGV: P, n, then n × (id, gk, group_id, group_size, rec). Whole groups, contiguous.
-- Returns the first assigned seq. Nothing is written if any task or group id exists.
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local id, gk = ARGV[3 + i * 5], ARGV[4 + i * 5]
  if redis.call('EXISTS', tkey(id)) == 1 then return fail_reply('DUPLICATE', 'task id ' .. id .. ' already submitted') end
  if redis.call('EXISTS', gkey(gk)) == 1 then return fail_reply('DUPLICATE', 'group ' .. gk .. ' already submitted') end
end
local last = redis.call('INCRBY', P .. ':seq', n)
local first = last - n
local now = now_ms()
for i = 0, n - 1 do
  local id, gk, gid, gsize, rec = ARGV[3 + i * 5], ARGV[4 + i * 5], ARGV[5 + i * 5], ARGV[6 + i * 5], ARGV[7 + i * 5]
  local seq = first + i
  redis.call('HSET', tkey(id), 'rec', rec, 'seq', seq, 'gk', gk, 'gid', gid, 'gsize', gsize,
    'status', 'pending', 'attempt', 0, 'worker', '', 'err', '', 'batch', '', 'sub_at', now)
  redis.call('ZADD', P .. ':pending', seq, id)
  redis.call('ZADD', P .. ':open', seq, id)
  redis.call('RPUSH', P .. ':gm:' .. gk, id)
  local g = gkey(gk)
  if redis.call('HSETNX', g, 'lo', seq) == 1 then redis.call('HSET', g, 'size', gsize) end
  redis.call('HSET', g, 'hi', seq)
end
redis.call('HINCRBY', CNT, 'pending', n)
redis.call('HINCRBY', CNT, 'submitted', n)
return first
