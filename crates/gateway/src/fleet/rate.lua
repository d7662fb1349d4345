-- A lease of rate capacity: one GCRA bucket per (account, group), shared by the fleet.
--
-- KEYS[1]  <prefix>:{<uin>}:r:<group>   the bucket's theoretical arrival time (TAT), in
--                                        microseconds of the Redis server's clock
-- ARGV[1]  emission interval (µs per call at the limit in force: the caller's, so a pack
--          bought a minute ago applies at once)
-- ARGV[2]  tolerance (µs the TAT may run ahead of now and still admit: (burst - 1) intervals)
-- ARGV[3]  want: calls to reserve for the caller's lease
-- ARGV[4]  debt: calls the caller already admitted on its own (a cold key); counted whatever
-- ARGV[5]  refund: calls of an expired lease the caller never used; given back
--
-- Returns { granted, wait }: `granted` calls (0..want) are reserved, counted in the TAT as if
-- admitted now (a reservation is already counted: the fleet never admits more than the bucket
-- allows); `wait` is how many µs until a whole lease of `want` would fit (0 when it did).
-- A refused call costs nothing: nothing is reserved for it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local debt = tonumber(ARGV[4])
local refund = tonumber(ARGV[5])

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if refund > 0 then
  tat = math.max(now, tat - refund * interval)
end
tat = tat + debt * interval

local granted = 0
local room = now + tolerance - tat
if room >= 0 then
  granted = math.min(want, math.floor(room / interval) + 1)
end
tat = tat + granted * interval

local wait = 0
if granted < want then
  wait = math.max(0, tat + (want - granted - 1) * interval - tolerance - now)
end

local ttl_ms = math.floor((tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl_ms)
return { granted, string.format('%.0f', wait) }
