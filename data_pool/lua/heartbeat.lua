-- ARGV: P, id, attempt ('' = any), lease_ms
local id = ARGV[2]
local e = check_running(id, ARGV[3])
if e then return e end
local deadline = now_ms() + tonumber(ARGV[4])
redis.call('HSET', tkey(id), 'lease', deadline)
redis.call('ZADD', P .. ':leases', deadline, id)
return 1
