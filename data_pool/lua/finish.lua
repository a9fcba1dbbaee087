-- ARGV: P, id, attempt, policy
local id = ARGV[2]
local e = check_running(id, ARGV[3])
if e then return e end
local k = tkey(id)
local n = redis.call('LLEN', P .. ':s:' .. id)
if n == 0 then
  return fail_reply('BADINPUT', 'task ' .. id .. ' has no samples; abort() it instead of finishing it')
end
local slen = tonumber(redis.call('HGET', k, 'slen') or '-1')
if slen >= 0 and slen ~= n then
  return fail_reply('BADINPUT', 'task ' .. id .. ': step_rewards have ' .. slen .. ' values for ' .. n ..
    ' samples; set_reward() again with one value per sample')
end
redis.call('ZREM', P .. ':leases', id)
redis.call('HSET', k, 'lease', '', 'fin_at', now_ms())
set_status(id, 'running', 'done')
group_update(redis.call('HGET', k, 'gk'), ARGV[4])
return 1
