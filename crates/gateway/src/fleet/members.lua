-- Fleet membership, and the concurrency keys that want absent members to register.
--
-- KEYS[1]  <prefix>:{fleet}:members     a sorted set: member -> expiry (ms, server clock)
-- KEYS[2]  <prefix>:{fleet}:contended   a sorted set: "<uin>:<group>" -> expiry (ms)
-- ARGV[1]  member id
-- ARGV[2]  TTL (ms): a member that does not announce again within it has left
-- ARGV[3]  1 = leaving (graceful shutdown): remove the member now
-- ARGV[4..] concurrency keys this member wants the others to register for
--
-- Returns { "member expiry_ms"..., '', contended... }.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
end
for i = 4, #ARGV do
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 4)
redis.call('PEXPIRE', KEYS[2], ttl * 4)
local out = {}
local live = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do table.insert(out, live[i] .. ' ' .. live[i + 1]) end
table.insert(out, '')
for _, c in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do table.insert(out, c) end
return out
