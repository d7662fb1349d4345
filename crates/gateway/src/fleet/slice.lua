-- One member's slice of a concurrency limit shared by the fleet.
--
-- KEYS[1]  <prefix>:{<uin>}:c:<group>   a hash: member -> "slice demand expires_ms";
--                                        "_limit" -> the limit last in force
-- ARGV[1]  member id
-- ARGV[2]  limit in force (0: the stored one, for a member that never saw a call)
-- ARGV[3]  calls the member has in flight now (its slice never drops below this)
-- ARGV[4]  demand: slots the member would use
-- ARGV[5]  entry TTL (ms): every member reports each of its entries several times a TTL, so
--          an entry not renewed within it is a dead member's, and its slots are free
-- ARGV[6]  N: the fleet size the static share divides by (floor(limit / N) is what a live
--          member without an entry may admit on its own)
-- ARGV[7]  1 = leave: drop the entry if that leaves the member's static share free
-- ARGV[8]  held: the cap the member applies while this request is in flight (its last slice)
-- ARGV[9..] live members (the caller's view of the fleet), each "member expiry_ms": one whose
--          membership expired since the caller's last look counts as gone at once
--
-- A shrink takes two reports: the entry keeps the cap the member applies until the member
-- reports again with the smaller one in force, so no other member is granted slots this one
-- may still be filling.
--
-- Invariant: the slices of the entries, plus a static share for each live member without
-- one, never exceed the limit (unless the limit itself was lowered below what is in flight;
-- then nobody gets a new slot until enough calls end). Each member admits only within what
-- this script last returned to it, so the fleet never has more than the limit in flight.
--
-- Returns { slice, contended, registered }: `contended` = 1 when the member wants more than
-- it got because of static shares kept for members without entries (they should register).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me = ARGV[1]
local limit = tonumber(ARGV[2])
local in_use = tonumber(ARGV[3])
local demand = tonumber(ARGV[4])
local ttl = tonumber(ARGV[5])
local n = math.max(1, tonumber(ARGV[6]))
local leave = ARGV[7] == '1'
local held_local = tonumber(ARGV[8])

if limit == 0 then
  limit = tonumber(redis.call('HGET', KEYS[1], '_limit') or '0')
else
  redis.call('HSET', KEYS[1], '_limit', limit)
end

local live = {}
local share = math.floor(limit / n)
for i = 9, #ARGV do
  local m, e = string.match(ARGV[i], '^(%S+) (%d+)$')
  if m and tonumber(e) > now then live[m] = true end
end

local entries = redis.call('HGETALL', KEYS[1])
local others = {}
local present = {}
local held = 0
for i = 1, #entries, 2 do
  local m = entries[i]
  if m ~= '_limit' and m ~= me then
    local s, d, e = string.match(entries[i + 1], '^(%d+) (%d+) (%d+)$')
    s, d, e = tonumber(s), tonumber(d), tonumber(e)
    if e <= now then
      redis.call('HDEL', KEYS[1], m)
    else
      present[m] = true
      held = held + s
      table.insert(others, { m, s, d })
    end
  end
end

local reserved = 0
for m, _ in pairs(live) do
  if m ~= me and not present[m] then reserved = reserved + share end
end

if leave and in_use == 0 and held_local <= share and held + reserved + share <= limit then
  redis.call('HDEL', KEYS[1], me)
  return { 0, 0, 0 }
end

-- Water-fill what is not kept for absent members over the demands, smallest first.
local capacity = math.max(0, limit - reserved)
local all = { { me, 0, demand } }
for _, o in ipairs(others) do table.insert(all, o) end
table.sort(all, function(a, b)
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[1] < b[1]
end)
local left = capacity
local target = 0
for i, e in ipairs(all) do
  local fair = math.floor(left / (#all - i + 1))
  local got = math.min(e[3], fair)
  left = left - got
  if e[1] == me then target = got end
end

local slice = math.min(target, math.max(0, limit - reserved - held))
if slice < in_use then slice = in_use end
local stored = math.max(slice, held_local)
redis.call('HSET', KEYS[1], me, string.format('%d %d %d', stored, demand, now + ttl))
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local contended = 0
if demand > slice and reserved > 0 then contended = 1 end
return { slice, contended, 1 }
