-- Commit samples that the same MULTI/EXEC has just RPUSHed to their tasks' lists
-- ({p}:s:<id>, k records each, in order). The payloads never pass through Lua (a 12 KiB value
-- costs more to hand to Lua than the whole RPUSH); this only checks each sample: its session
-- must be open on the task's current attempt and the task running. Rejected records are cut
-- off the list's tail again (LTRIM, or tombstone + LREM when valid ones are mixed in).
-- ARGV: P, n_groups, then per group: task_id, k, k × (session_id, weight_version).
-- Returns one entry per sample: 1, or an error string "CODE message".
local ngroups = tonumber(ARGV[2])
local out = {}
local pos = 3
local TOMB = '\0'
for _ = 1, ngroups do
  local id, k = ARGV[pos], tonumber(ARGV[pos + 1])
  pos = pos + 2
  local key = P .. ':s:' .. id
  local v = redis.call('HMGET', tkey(id), 'status', 'attempt', 'minwv')
  local len = redis.call('LLEN', key)
  local minwv = v[3] and tonumber(v[3])
  local old_minwv = minwv
  local bad = {}
  local sessions = {}
  for j = 0, k - 1 do
    local sid, wv = ARGV[pos], tonumber(ARGV[pos + 1])
    pos = pos + 2
    local err = nil
    if not v[1] then
      err = 'UNKNOWN task ' .. id .. ' was never submitted'
    else
      local s = sessions[sid]
      if not s then
        s = redis.call('HMGET', P .. ':sess:' .. sid, 't', 'a')
        sessions[sid] = s
      end
      if not s[1] then
        err = 'STALE session ' .. sid .. ' of task ' .. id ..
          ' is not open: never opened (open_session) or its attempt ended'
      elseif s[1] ~= id then
        err = 'BADINPUT sample of task ' .. id .. ' sent on session ' .. sid .. ' of task ' .. s[1]
      elseif v[1] ~= 'running' or v[2] ~= s[2] then
        err = 'STALE task ' .. id .. ' is ' .. v[1] .. ' on attempt ' .. v[2] ..
          '; session ' .. sid .. ' belongs to attempt ' .. s[2]
      end
    end
    if err then
      out[#out + 1] = err
      bad[#bad + 1] = len - k + j
    else
      out[#out + 1] = 1
      if not minwv or wv < minwv then minwv = wv end
    end
  end
  if #bad == k then
    redis.call('LTRIM', key, 0, -(k + 1))
  elseif #bad > 0 then
    for _, idx in ipairs(bad) do redis.call('LSET', key, idx, TOMB) end
    redis.call('LREM', key, -#bad, TOMB)
  end
  if minwv ~= old_minwv then redis.call('HSET', tkey(id), 'minwv', minwv) end
end
return out
