-- Sluice quota operations, applied in order, each one atomic (the whole script is).
-- The clock is Redis TIME (microseconds), never the caller's. GCRA arithmetic mirrors quota/_gcra.py.
--
-- ARGV[1] is a JSON array of operations (see quota/_wire.py); each names its keys, and every key must be one of
-- KEYS (the batch's distinct keys, declared for Redis Cluster's routing):
--   ["A", id, marker, marker_ttl_ms, [[key, interval_us, capacity, cost]...], [[key, limit, ttl_us]...]]  acquire
--   ["A", ..., [[key, interval_us, capacity, cost, flexible]...], [...], [extra, overrun]]   stretched acquire:
--            the costs are floors; once all fit, each flexible bucket takes up to extra units more, as many as fit
--            in all of them (overrun 0) or all of them, into debt (overrun 1); the marker is 'granted <extra>'
--   ["S", id, marker, marker_ttl_ms, [[key, interval_us, delta]...], [lease_key...]]     settle (charge/refund, release)
--   ["V", id, marker, marker_ttl_ms, [[key, interval_us, cost, flexible]...], [lease_key...]]   void (give a
--            decision back: its costs, and flexible * extra more for a stretched grant)
--   ["N", id, marker, [[key, ttl_us]...]]                                                 renew leases
-- Every operation is idempotent or fenced by its decision's marker (a string key, kept marker_ttl_ms):
--   acquire: absent -> decide; on a grant that holds something, mark 'granted'. 'granted' -> granted again,
--            nothing charged twice (a retry after a lost connection). 'void' or 'settled' -> refused, -1.
--   settle:  applied once, then 'settled'; a replay (after a timeout) or a settle of a voided decision does nothing.
--   void:    'granted' -> refund its charges, release its leases; absent -> an acquire still on its way will be
--            refused; either way 'void'. Already void or settled -> nothing.
--   renew:   holds the leases again (even if Redis lost them), unless the decision is settled or void.
-- Replies, one per operation: A -> {granted (1), refused (0) or voided (-1), refused_bucket, refused_lease,
--   retry_after_us, {remaining, reset_us, retry_us}*nb[, extra (a stretched grant)]}; S, V, N -> {1} when
--   applied, {0} when fenced off.
--   Indices are 0-based, -1 for none; durations are whole microseconds rounded up, or 'inf'.
local EPS = 1e-3
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local declared = {}
for _, k in ipairs(KEYS) do declared[k] = true end
local replies = {}

local function key(k)
  if not declared[k] then error('quota.lua: key not declared in KEYS: ' .. tostring(k)) end
  return k
end
-- Durations travel as whole microseconds, rounded up (a retry after them fits); 'inf' for never.
local function us(x) return math.ceil(x) end
local function units(us, interval)
  local u = math.floor(us / interval + 1e-9)
  if u < 0 then return 0 end
  return u
end
-- A bucket is stored as "tat interval": a rate changed by a reload restates the units used at the new interval.
local function read_tat(k, interval)
  local v = redis.call('GET', k)
  if not v then return now end
  local tat, stored = string.match(v, '^(%S+) (%S+)$')
  tat, stored = tonumber(tat), tonumber(stored)
  if tat <= now or stored == interval then return tat end
  return now + (tat - now) / stored * interval
end
local function write_tat(k, tat, interval)
  redis.call('SET', k, string.format('%.17g %.17g', tat, interval), 'PX', math.ceil((tat - now) / 1000) + 1000)
end

-- A bucket as it stands, charged nothing.
local function standing(k, interval, cap)
  local base = math.max(read_tat(k, interval), now)
  return {units(cap * interval - (base - now), interval), us(base - now), 0}
end

local function acquire(op)
  local lease_id, marker, marker_ttl, bspecs, lspecs = op[2], key(op[3]), op[4], op[5], op[6]
  local nb, nl = #bspecs, #lspecs
  local was = redis.call('GET', marker)
  if was then
    local states = {}
    for i = 1, nb do states[i] = standing(key(bspecs[i][1]), bspecs[i][2], bspecs[i][3]) end
    if was == 'granted' then return {1, -1, -1, 0, states} end
    local extra = string.match(was, '^granted (%d+)$')
    if extra then return {1, -1, -1, 0, states, tonumber(extra)} end
    return {-1, -1, -1, 0, states}
  end
  local bkeys, intervals, newtats, states, bases, taus, fits = {}, {}, {}, {}, {}, {}, {}
  local refused, worst = -1, 0
  for i = 1, nb do
    local spec = bspecs[i]
    local k, interval, cap, cost = key(spec[1]), spec[2], spec[3], spec[4]
    local tat = read_tat(k, interval)
    local tau = cap * interval
    local base = math.max(tat, now)
    local new_tat = base + cost * interval
    local retry
    if cost * interval > tau + EPS then
      retry = 'inf'
      states[i] = {units(tau - (base - now), interval), us(base - now), retry}
      if refused < 0 or worst ~= 'inf' then refused, worst = i - 1, 'inf' end
    elseif new_tat - tau <= now + EPS then
      states[i] = {units(tau - (new_tat - now), interval), us(new_tat - now), 0}
      fits[i] = true
    else
      retry = new_tat - tau - now
      states[i] = {units(tau - (base - now), interval), us(base - now), us(retry)}
      if worst ~= 'inf' and (refused < 0 or retry > worst) then refused, worst = i - 1, retry end
    end
    bkeys[i], intervals[i], newtats[i], bases[i], taus[i] = k, interval, new_tat, base, tau
  end
  -- Refused: nothing is charged, so the buckets that would have fit report themselves as they stand.
  local function as_they_stand()
    for i = 1, nb do
      if fits[i] then states[i] = {units(taus[i] - (bases[i] - now), intervals[i]), us(bases[i] - now), 0} end
    end
  end
  local lkeys, limits, ttls = {}, {}, {}
  for i = 1, nl do
    local spec = lspecs[i]
    lkeys[i], limits[i], ttls[i] = key(spec[1]), spec[2], spec[3]
  end
  if refused >= 0 then
    as_they_stand()
    local w = worst
    if w ~= 'inf' then w = us(w) end
    return {0, refused, -1, w, states}
  end
  for i = 1, nl do
    redis.call('ZREMRANGEBYSCORE', lkeys[i], '-inf', now)
    if redis.call('ZCARD', lkeys[i]) >= limits[i] and not redis.call('ZSCORE', lkeys[i], lease_id) then
      as_they_stand()
      return {0, -1, i - 1, 1000000, states}
    end
  end
  local stretch, extra = op[7], nil
  if stretch then
    extra = stretch[1]
    for i = 1, nb do
      if bspecs[i][5] == 1 and stretch[2] == 0 then  -- as far as every flexible bucket has room
        local room = units(taus[i] + EPS - (newtats[i] - now), intervals[i])
        if room < extra then extra = room end
      end
    end
    for i = 1, nb do
      if bspecs[i][5] == 1 then
        newtats[i] = newtats[i] + extra * intervals[i]
        states[i] = {units(taus[i] - (newtats[i] - now), intervals[i]), us(newtats[i] - now), 0}
      end
    end
  end
  local holds = nl > 0 or (extra ~= nil and extra > 0)
  for i = 1, nb do
    write_tat(bkeys[i], newtats[i], intervals[i])
    if bspecs[i][4] ~= 0 then holds = true end
  end
  for i = 1, nl do
    redis.call('ZADD', lkeys[i], now + ttls[i], lease_id)
    redis.call('PEXPIRE', lkeys[i], math.ceil(ttls[i] / 1000) + 1000)
  end
  if extra ~= nil then
    if holds then redis.call('SET', marker, 'granted ' .. extra, 'PX', marker_ttl) end
    return {1, -1, -1, 0, states, extra}
  end
  if holds then redis.call('SET', marker, 'granted', 'PX', marker_ttl) end
  return {1, -1, -1, 0, states}
end

local function adjust(k, interval, delta)
  if delta == 0 then return end
  local tat = read_tat(k, interval)
  local new_tat
  if delta > 0 then new_tat = math.max(tat, now) + delta * interval
  else new_tat = math.max(tat + delta * interval, now) end
  if new_tat > now then
    write_tat(k, new_tat, interval)
  else
    redis.call('DEL', k)
  end
end

local function over(was) return was == 'settled' or was == 'void' end

local function settle(op)
  local lease_id, marker, marker_ttl = op[2], key(op[3]), op[4]
  if over(redis.call('GET', marker)) then return {0} end
  for _, spec in ipairs(op[5]) do adjust(key(spec[1]), spec[2], spec[3]) end
  for _, k in ipairs(op[6]) do redis.call('ZREM', key(k), lease_id) end
  redis.call('SET', marker, 'settled', 'PX', marker_ttl)
  return {1}
end

local function void(op)
  local lease_id, marker, marker_ttl = op[2], key(op[3]), op[4]
  local was = redis.call('GET', marker)
  if over(was) then return {0} end
  local granted = was and string.match(was, '^granted ?(%d*)$')
  if granted then
    local extra = tonumber(granted) or 0
    for _, spec in ipairs(op[5]) do adjust(key(spec[1]), spec[2], -(spec[3] + (spec[4] or 0) * extra)) end
  end
  for _, k in ipairs(op[6]) do redis.call('ZREM', key(k), lease_id) end
  redis.call('SET', marker, 'void', 'PX', marker_ttl)
  return {1}
end

local function renew(op)
  local lease_id, marker = op[2], key(op[3])
  if over(redis.call('GET', marker)) then return {0} end
  for _, spec in ipairs(op[4]) do
    local k, ttl = key(spec[1]), spec[2]
    redis.call('ZADD', k, now + ttl, lease_id)
    redis.call('PEXPIRE', k, math.ceil(ttl / 1000) + 1000)
  end
  return {1}
end

local handlers = {A = acquire, S = settle, V = void, N = renew}
for _, op in ipairs(cjson.decode(ARGV[1])) do
  replies[#replies + 1] = handlers[op[1]](op)
end
return replies
