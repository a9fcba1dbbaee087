-- ARGV: P, id, attempt, reason, max_attempts, policy. Returns the new status.
local id = ARGV[2]
local e = check_running(id, ARGV[3])
if e then return e end
return do_abort(id, ARGV[4], tonumber(ARGV[5]), ARGV[6])
