-- ARGV: P, id, reason, policy, malformed ('1' counts it as a malformed record). Returns the old status.
local id = ARGV[2]
local k = tkey(id)
local st = redis.call('HGET', k, 'status')
if not st then return fail_reply('UNKNOWN', 'task ' .. id .. ' was never submitted') end
if st == 'completed' or st == 'failed' or st == 'dropped' then return st end
if st == 'claimed' then
  return fail_reply('STALE', 'task ' .. id .. ' is claimed by batch ' .. redis.call('HGET', k, 'batch'))
end
if st == 'pending' then redis.call('ZREM', P .. ':pending', id) end
if st == 'running' then redis.call('ZREM', P .. ':leases', id); redis.call('HSET', k, 'lease', '') end
set_status(id, st, 'failed')
add_err(id, ARGV[3])
consume(id)
if ARGV[5] == '1' then redis.call('HINCRBY', CNT, 'malformed', 1) end
group_update(redis.call('HGET', k, 'gk'), ARGV[4])
return st
