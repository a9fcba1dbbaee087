-- ARGV: P, id, session_id. Returns the attempt the session is bound to.
local id, sid = ARGV[2], ARGV[3]
local e = check_running(id, '')
if e then return e end
local sk = P .. ':sess:' .. sid
local bound = redis.call('HGET', sk, 't')
if bound and bound ~= id then
  return fail_reply('BADINPUT', 'session ' .. sid .. ' is already bound to task ' .. bound)
end
local attempt = redis.call('HGET', tkey(id), 'attempt')
redis.call('HSET', sk, 't', id, 'a', attempt)
redis.call('SADD', P .. ':ts:' .. id, sid)
return tonumber(attempt)
