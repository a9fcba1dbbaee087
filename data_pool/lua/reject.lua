-- A claimed task whose records cannot be decoded: fail it, drop its group under 'drop', and take
-- them out of the batch. ARGV: P, batch_id, id, reason, policy. Returns the ids removed.
local bid, id, policy = ARGV[2], ARGV[3], ARGV[5]
local v = redis.call('HMGET', tkey(id), 'status', 'batch', 'gk')
if v[1] ~= 'claimed' or v[2] ~= bid then return {} end
local bt = P .. ':bt:' .. bid
set_status(id, 'claimed', 'failed')
add_err(id, ARGV[4])
redis.call('HINCRBY', CNT, 'malformed', 1)
redis.call('LREM', bt, 0, id)
local removed = {id}
if policy == 'drop' then
  for _, m in ipairs(redis.call('LRANGE', P .. ':gm:' .. v[3], 0, -1)) do
    local w = redis.call('HMGET', tkey(m), 'status', 'batch')
    if w[1] == 'claimed' and w[2] == bid then
      set_status(m, 'claimed', 'dropped')
      add_err(m, 'dropped: another member of its group failed')
      redis.call('LREM', bt, 0, m)
      removed[#removed + 1] = m
    end
  end
end
if redis.call('LLEN', bt) == 0 then
  redis.call('DEL', P .. ':b:' .. bid)
  redis.call('ZREM', P .. ':claims', bid)
end
return removed
