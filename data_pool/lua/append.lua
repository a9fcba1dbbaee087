-- ARGV: P, task_id, session_id, weight_version, rec. Returns the task's sample count.
local id, sid, wv = ARGV[2], ARGV[3], tonumber(ARGV[4])
local s = redis.call('HMGET', P .. ':sess:' .. sid, 't', 'a')
if not s[1] then
  if redis.call('EXISTS', tkey(id)) == 0 then return fail_reply('UNKNOWN', 'task ' .. id .. ' was never submitted') end
  return fail_reply('STALE', 'session ' .. sid .. ' of task ' .. id ..
    ' is not open: never opened (open_session) or its attempt ended')
end
if s[1] ~= id then
  return fail_reply('BADINPUT', 'sample of task ' .. id .. ' sent on session ' .. sid .. ' of task ' .. s[1])
end
local k = tkey(id)
local v = redis.call('HMGET', k, 'status', 'attempt', 'minwv')
if v[1] ~= 'running' or v[2] ~= s[2] then
  return fail_reply('STALE', 'task ' .. id .. ' is ' .. tostring(v[1]) .. ' on attempt ' .. tostring(v[2]) ..
    '; session ' .. sid .. ' belongs to attempt ' .. s[2])
end
local n = redis.call('RPUSH', P .. ':s:' .. id, ARGV[5])
if not v[3] or wv < tonumber(v[3]) then redis.call('HSET', k, 'minwv', wv) end
return n
