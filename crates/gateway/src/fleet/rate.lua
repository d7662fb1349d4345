-- A lease of rate capacity: one GCRA bucket per (account, group), shared by the fleet.
--
-- KEYS[1]  <prefix>:{<uin>}:r:<group>   the bucket's theoretical arrival time (TAT), in
--                                        microseconds of the Redis server's clock
-- ARGV[1]  emission interval (µs per call at the limit in force: the caller's, so a pack
--          bought a minute ago applies at once)
-- ARGV[2]  tolerance (µs the TAT may run ahead of now and still admit: (burst - 1) intervals)
-- ARGV[3]  want: calls to reserve for the caller's lease
-- ARGV[4]  debt: calls the caller already admitted on its own (a cold key); counted whatever
-- ARGV[5]  refund: leased calls the caller never used (its key went quiet); given back
-- ARGV[6]  how far ahead (µs) a lease may be reserved
--
-- Returns { granted, wait }, the granted calls counted in the TAT (a reservation is already
-- counted: the fleet never admits more than the bucket allows):
--   wait = 0:             `granted` (1..want) calls usable now, as many as fit;
--   wait > 0, granted > 0: none fit now, so a whole lease is reserved for later, usable from
--                          `wait` µs on (when the last of its calls fits): at its limit a key
--                          costs one command per lease, however many replicas want it;
--   granted = 0:          the bucket is reserved further ahead than ARGV[6]; ask after `wait`.
-- A refused call costs nothing: nothing is reserved for it.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local debt = tonumber(ARGV[4])
local refund = tonumber(ARGV[5])
local max_ahead = tonumber(ARGV[6])

local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if refund > 0 then
  tat = math.max(now, tat - refund * interval)
end
tat = tat + debt * interval

local granted = 0
local wait = 0
local room = now + tolerance - tat
if room >= 0 then
  granted = math.min(want, math.floor(room / interval) + 1)
  tat = tat + granted * interval
elseif want > 0 then
  -- The last call of a whole lease fits at tat + (want - 1) * interval - tolerance.
  local usable = tat + (want - 1) * interval - tolerance - now
  if usable <= max_ahead then
    granted = want
    wait = usable
    tat = tat + want * interval
  else
    wait = usable - max_ahead
  end
end

local ttl_ms = math.floor((tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl_ms)
return { granted, string.format('%.0f', wait) }
