-- ARGV: P, batch_id, consumer, retain ('1' keeps samples and records)
local bid, consumer, retain = ARGV[2], ARGV[3], ARGV[4] == '1'
local b = P .. ':b:' .. bid
local owner = redis.call('HGET', b, 'consumer')
if not owner then
  return fail_reply('CLAIMLOST', 'batch ' .. bid .. ' is not claimed: already acked, or recovered after its claim expired')
end
if owner ~= consumer then
  return fail_reply('CLAIMLOST', 'batch ' .. bid .. ' is claimed by ' .. owner .. ', not ' .. consumer)
end
local bt = P .. ':bt:' .. bid
local now = now_ms()
local n = 0
local groups = {}
for _, id in ipairs(redis.call('LRANGE', bt, 0, -1)) do
  local k = tkey(id)
  local v = redis.call('HMGET', k, 'status', 'batch', 'gk')
  if v[1] == 'claimed' and v[2] == bid then
    set_status(id, 'claimed', 'completed')
    redis.call('HSET', k, 'ack_at', now)
    n = n + 1
    groups[v[3]] = true
    if not retain then
      local nsamples = redis.call('LLEN', P .. ':s:' .. id)
      clear_attempt(id)
      redis.call('HSET', k, 'nsamples', nsamples)
      redis.call('HDEL', k, 'rec')
    end
  end
end
if not retain then
  for gk, _ in pairs(groups) do
    local all_done = true
    for _, m in ipairs(redis.call('LRANGE', P .. ':gm:' .. gk, 0, -1)) do
      local st = redis.call('HGET', tkey(m), 'status')
      if st ~= 'completed' and st ~= 'failed' and st ~= 'dropped' then all_done = false end
    end
    if all_done then redis.call('DEL', P .. ':gm:' .. gk, gkey(gk)) end
  end
end
redis.call('DEL', b, bt)
redis.call('ZREM', P .. ':claims', bid)
return n
