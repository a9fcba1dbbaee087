-- Prepended to every data-pool script. ARGV[1] is the key prefix ("{forge}").
-- Errors are returned as redis.error_reply with a leading code the Python side maps:
-- UNKNOWN (no such task), STALE (wrong state / attempt / session), CLAIMLOST, DUPLICATE, BADINPUT.
local P = ARGV[1]
local CNT = P .. ':cnt'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tkey(id) return P .. ':t:' .. id end
local function gkey(gk) return P .. ':g:' .. gk end

local function fail_reply(code, msg) return redis.error_reply(code .. ' ' .. msg) end

local function set_status(id, old, new)
  redis.call('HSET', tkey(id), 'status', new)
  redis.call('HINCRBY', CNT, old, -1)
  redis.call('HINCRBY', CNT, new, 1)
end

local function add_err(id, msg)
  local k = tkey(id)
  local e = redis.call('HGET', k, 'err')
  if e and e ~= '' then e = e .. '; ' .. msg else e = msg end
  redis.call('HSET', k, 'err', e)
end

-- a consumed task no longer holds the head: claimed, failed or dropped
local function consume(id) redis.call('ZREM', P .. ':open', id) end

-- forget the samples, sessions and rewards of the current attempt
local function clear_attempt(id)
  redis.call('DEL', P .. ':s:' .. id)
  local ts = P .. ':ts:' .. id
  for _, sid in ipairs(redis.call('SMEMBERS', ts)) do redis.call('DEL', P .. ':sess:' .. sid) end
  redis.call('DEL', ts)
  redis.call('HDEL', tkey(id), 'reward', 'srew', 'met', 'slen', 'minwv')
end

-- nil if the task is running on `attempt` ('' = any attempt), else an error reply
local function check_running(id, attempt)
  local v = redis.call('HMGET', tkey(id), 'status', 'attempt')
  if not v[1] then return fail_reply('UNKNOWN', 'task ' .. id .. ' was never submitted') end
  if v[1] ~= 'running' then
    return fail_reply('STALE', 'task ' .. id .. ' is ' .. v[1] .. ', not running')
  end
  if attempt ~= '' and attempt ~= v[2] then
    return fail_reply('STALE', 'task ' .. id .. ' is on attempt ' .. v[2] .. ', not ' .. attempt ..
      ' (its lease expired and it was retried)')
  end
  return nil
end

-- re-evaluate a group after a member changed state; policy 'drop' | 'partial'.
-- Settled (no member pending/running): ready if some member is done (and, under 'drop', none
-- failed or dropped); under 'drop' a failed member drops the done ones.
local function group_update(gk, policy)
  local members = redis.call('LRANGE', P .. ':gm:' .. gk, 0, -1)
  local done, bad = {}, 0
  for _, m in ipairs(members) do
    local st = redis.call('HGET', tkey(m), 'status')
    if st == 'pending' or st == 'running' then return end
    if st == 'done' then done[#done + 1] = m
    elseif st == 'failed' or st == 'dropped' then bad = bad + 1 end
  end
  if bad > 0 and policy == 'drop' then
    for _, m in ipairs(done) do
      set_status(m, 'done', 'dropped')
      add_err(m, 'dropped: another member of its group failed')
      consume(m)
    end
    done = {}
  end
  if #done == 0 then
    redis.call('ZREM', P .. ':ready', gk)
  else
    redis.call('ZADD', P .. ':ready', redis.call('HGET', gkey(gk), 'lo'), gk)
  end
end

-- end the current attempt of a running task: retry at the same seq, or fail after max_attempts
local function do_abort(id, reason, max_attempts, policy)
  local k = tkey(id)
  local attempt = tonumber(redis.call('HGET', k, 'attempt'))
  redis.call('ZREM', P .. ':leases', id)
  clear_attempt(id)
  redis.call('HSET', k, 'lease', '')
  add_err(id, 'attempt ' .. attempt .. ': ' .. reason)
  if attempt + 1 >= max_attempts then
    set_status(id, 'running', 'failed')
    consume(id)
    group_update(redis.call('HGET', k, 'gk'), policy)
    return 'failed'
  end
  redis.call('HSET', k, 'attempt', attempt + 1)
  set_status(id, 'running', 'pending')
  redis.call('ZADD', P .. ':pending', redis.call('HGET', k, 'seq'), id)
  redis.call('HINCRBY', CNT, 'retries', 1)
  return 'pending'
end

-- retry (or fail) up to `limit` tasks whose lease expired; returns how many
local function reap(now, limit, max_attempts, policy)
  local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(ids) do
    local w = redis.call('HGET', tkey(id), 'worker') or '?'
    do_abort(id, 'lease expired (worker ' .. w .. ')', max_attempts, policy)
  end
  return #ids
end

-- give a claimed batch back: its tasks are done again (ready at their seq)
local function release(bid, reason, policy)
  local bt = P .. ':bt:' .. bid
  local groups = {}
  for _, id in ipairs(redis.call('LRANGE', bt, 0, -1)) do
    local v = redis.call('HMGET', tkey(id), 'status', 'batch', 'seq', 'gk')
    if v[1] == 'claimed' and v[2] == bid then
      set_status(id, 'claimed', 'done')
      redis.call('HSET', tkey(id), 'batch', '')
      redis.call('ZADD', P .. ':open', v[3], id)
      if reason ~= '' then add_err(id, 'batch ' .. bid .. ' released: ' .. reason) end
      groups[v[4]] = true
    end
  end
  for gk, _ in pairs(groups) do group_update(gk, policy) end
  redis.call('DEL', P .. ':b:' .. bid, bt)
  redis.call('ZREM', P .. ':claims', bid)
end
