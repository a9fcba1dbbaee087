-- ARGV: P, id, attempt, reward, srew (msgpack), met (msgpack), slen (-1: no step rewards)
local id = ARGV[2]
local e = check_running(id, ARGV[3])
if e then return e end
redis.call('HSET', tkey(id), 'reward', ARGV[4], 'srew', ARGV[5], 'met', ARGV[6], 'slen', ARGV[7])
return 1
