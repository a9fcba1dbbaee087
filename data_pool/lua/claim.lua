-- ARGV: P, want, W (-1 = unbounded), batch_id, consumer, claim_ms, max_staleness (-1 = off), policy
-- Claims ready groups in seq order while they lie in the window [head, head+W) (the group holding
-- the head is always eligible) and fit in `want` (the first group of an empty claim always fits).
-- Returns {wv, max_acq_seq, now, dropped_stale, head_after, stop, n, n × (id, seq, minwv, fin_at, gk, head)}
-- stop: 'full' (want reached), 'nofit' (next eligible group too big), 'wait' (none eligible now)
local want, W = tonumber(ARGV[2]), tonumber(ARGV[3])
local bid, consumer, claim_ms = ARGV[4], ARGV[5], tonumber(ARGV[6])
local maxstale, policy = tonumber(ARGV[7]), ARGV[8]
local now = now_ms()
local wv = tonumber(redis.call('GET', P .. ':wv') or '0')
local bt = P .. ':bt:' .. bid
local already = redis.call('LLEN', bt)

local function head()
  local h = redis.call('ZRANGE', P .. ':open', 0, 0, 'WITHSCORES')
  if #h == 0 then return tonumber(redis.call('GET', P .. ':seq') or '0') end
  return tonumber(h[2])
end

local out, taken, dropped_stale, stop = {}, 0, 0, 'full'
while taken < want do
  local h = head()
  local c = redis.call('ZRANGE', P .. ':ready', 0, 0, 'WITHSCORES')
  if #c == 0 then stop = 'wait'; break end
  local gk, lo = c[1], tonumber(c[2])
  local hi = tonumber(redis.call('HGET', gkey(gk), 'hi'))
  if W >= 0 and lo > h and hi >= h + W then stop = 'wait'; break end
  local ok, stale = {}, {}
  for _, m in ipairs(redis.call('LRANGE', P .. ':gm:' .. gk, 0, -1)) do
    local v = redis.call('HMGET', tkey(m), 'status', 'minwv')
    if v[1] == 'done' then
      if maxstale >= 0 and v[2] and wv - tonumber(v[2]) > maxstale then
        stale[#stale + 1] = {m, wv - tonumber(v[2])}
      else
        ok[#ok + 1] = m
      end
    end
  end
  for _, s in ipairs(stale) do
    set_status(s[1], 'done', 'dropped')
    add_err(s[1], 'dropped: stale by ' .. s[2] .. ' weight versions (bound ' .. maxstale .. ')')
    consume(s[1])
  end
  dropped_stale = dropped_stale + #stale
  if #stale > 0 and policy == 'drop' then
    for _, m in ipairs(ok) do
      set_status(m, 'done', 'dropped')
      add_err(m, 'dropped: another member of its group was stale')
      consume(m)
    end
    ok = {}
  end
  if #ok == 0 then
    redis.call('ZREM', P .. ':ready', gk)
  elseif (taken + already) > 0 and taken + #ok > want then
    stop = 'nofit'
    break
  else
    redis.call('ZREM', P .. ':ready', gk)
    for _, m in ipairs(ok) do
      local v = redis.call('HMGET', tkey(m), 'seq', 'minwv', 'fin_at')
      set_status(m, 'done', 'claimed')
      redis.call('HSET', tkey(m), 'batch', bid, 'claim_at', now)
      consume(m)
      redis.call('RPUSH', bt, m)
      out[#out + 1] = m
      out[#out + 1] = v[1]
      out[#out + 1] = v[2] or ''
      out[#out + 1] = v[3] or ''
      out[#out + 1] = gk
      out[#out + 1] = h
    end
    taken = taken + #ok
  end
end
if dropped_stale > 0 then redis.call('HINCRBY', CNT, 'dropped_stale', dropped_stale) end
if taken > 0 then
  redis.call('HSET', P .. ':b:' .. bid, 'consumer', consumer, 'created', now)
  redis.call('ZADD', P .. ':claims', now + claim_ms, bid)
end
local h = head()
redis.call('HSET', P .. ':sched', 'head', h, 'window', W)
local res = {wv, tonumber(redis.call('HGET', CNT, 'max_acq_seq') or '-1'), now, dropped_stale, h, stop, taken}
for _, x in ipairs(out) do res[#res + 1] = x end
return res
