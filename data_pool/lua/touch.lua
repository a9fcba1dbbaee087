-- ARGV: P, batch_id, consumer, claim_ms
local bid, consumer = ARGV[2], ARGV[3]
local owner = redis.call('HGET', P .. ':b:' .. bid, 'consumer')
if owner ~= consumer then
  return fail_reply('CLAIMLOST', 'batch ' .. bid .. ' is not claimed by ' .. consumer)
end
redis.call('ZADD', P .. ':claims', now_ms() + tonumber(ARGV[4]), bid)
return 1
