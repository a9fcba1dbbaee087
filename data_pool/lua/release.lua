-- nack one batch. ARGV: P, batch_id, consumer, reason, policy
local bid, consumer = ARGV[2], ARGV[3]
local owner = redis.call('HGET', P .. ':b:' .. bid, 'consumer')
if not owner then return fail_reply('CLAIMLOST', 'batch ' .. bid .. ' is not claimed') end
if owner ~= consumer then
  return fail_reply('CLAIMLOST', 'batch ' .. bid .. ' is claimed by ' .. owner .. ', not ' .. consumer)
end
release(bid, ARGV[4], ARGV[5])
return 1
