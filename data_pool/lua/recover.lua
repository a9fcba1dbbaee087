-- ARGV: P, mode, consumer, policy, max_attempts. mode 'expired': release every batch whose claim
-- expired; 'consumer': release every batch of `consumer`; 'leases': neither. All modes also retry
-- tasks whose lease expired. Returns {batches released, tasks reaped}.
local mode, consumer, policy = ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local n = 0
local bids = {}
if mode == 'expired' then
  bids = redis.call('ZRANGEBYSCORE', P .. ':claims', '-inf', now)
elseif mode == 'consumer' then
  bids = redis.call('ZRANGE', P .. ':claims', 0, -1)
end
for _, bid in ipairs(bids) do
  local owner = redis.call('HGET', P .. ':b:' .. bid, 'consumer')
  if mode == 'expired' or owner == consumer then
    release(bid, mode == 'expired' and 'claim expired' or ('consumer ' .. consumer .. ' restarted'), policy)
    n = n + 1
  end
end
local reaped = reap(now, 1000, tonumber(ARGV[5]), policy)
return {n, reaped}
