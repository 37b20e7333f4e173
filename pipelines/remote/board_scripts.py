"""The Lua scripts that change a job's state: each one is a compare-and-set in Redis.

Several app processes dispatch and several workers report, with no process in charge.
Every step that moves a job (claim, start, finish, fail, cancel, retry, stopping a job
whose waiter is gone) therefore runs as one script that first checks the state it
expects (state, attempt, worker, lease) and otherwise does nothing, so a job is never
handed out twice or finished twice, and a stale Celery message (an old attempt) changes
nothing.

Every script takes the key prefix as ARGV[1] and names keys the way `BoardKeys` does
(`P job:<id>`, `P queue:<owner>`, ...); keep the two in step. Timestamps come from the
Redis server's clock (TIME), so wait and run times do not depend on the app's and the
workers' clocks agreeing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_PRELUDE = r"""
local P = ARGV[1]
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function stamp(t) return string.format('%.6f', t) end
local function publish(id, event)
  redis.call('PUBLISH', P .. 'events:' .. id, cjson.encode(event))
end
local function kick(why) redis.call('PUBLISH', P .. 'kick', why) end
-- free the worker, if it is still marked busy with this job
local function unbusy(worker, id)
  if worker and worker ~= '' and redis.call('GET', P .. 'busy:' .. worker) == id then
    redis.call('DEL', P .. 'busy:' .. worker)
  end
end
-- the job leaves the board with a final state; its hash stays a day for late readers.
-- A job cancelled for a reason of the board's own (its waiter's lease lapsed) keeps
-- that reason, whatever the worker that stopped it says.
local function settle(id, state, message)
  local job = P .. 'job:' .. id
  local t = now()
  if state == 'cancelled' then
    local why = redis.call('HGET', job, 'cancel_reason')
    if why and why ~= '' then message = why end
  end
  redis.call('HSET', job, 'state', state, 'finished_at', stamp(t))
  redis.call('HDEL', job, 'ahead')
  if message then redis.call('HSET', job, 'message', message) end
  local started = redis.call('HGET', job, 'started_at')
  if started and started ~= '' then
    redis.call('HINCRBYFLOAT', P .. 'stats', 'run_seconds_sum', t - tonumber(started))
    redis.call('HINCRBY', P .. 'stats', 'run_count', 1)
  end
  redis.call('EXPIRE', job, 86400)
  redis.call('SREM', P .. 'active', id)
  unbusy(redis.call('HGET', job, 'worker'), id)
  redis.call('HINCRBY', P .. 'stats', state, 1)
  publish(id, {type = 'state', state = state})
  kick('settled')
end
-- stop a job as Stop does: a queued one leaves the board at once, a dispatched or
-- running one is flagged (its worker reads the flag between steps)
local function cancel(id, reason)
  local job = P .. 'job:' .. id
  local f = redis.call('HMGET', job, 'state', 'owner')
  local state, owner = f[1], f[2]
  if not state then return 'unknown' end
  local live = state == 'queued' or state == 'dispatched' or state == 'running'
  if live and reason then redis.call('HSET', job, 'cancel_reason', reason) end
  if state == 'queued' then
    local queue = P .. 'queue:' .. owner
    redis.call('LREM', queue, 0, id)
    if redis.call('LLEN', queue) == 0 then redis.call('LREM', P .. 'ring', 0, owner) end
    settle(id, 'cancelled', nil)
    return 'cancelled'
  end
  if state == 'dispatched' or state == 'running' then
    redis.call('HSET', job, 'cancel', '1')
    return 'cancelling'
  end
  return state
end
-- does the job still hold the place this caller believes it holds?
local function holds(id, states, worker, attempt)
  local f = redis.call('HMGET', P .. 'job:' .. id, 'state', 'worker', 'attempt')
  if not f[1] or not states[f[1]] then return false end
  return f[2] == worker and f[3] == attempt
end
"""

# ARGV: P, id, owner, kind, model, payload, lease ms -> length of the owner's list
# A lease of 0 ms: nobody awaits the job (it is never stopped for a lapsed lease).
ENQUEUE = r"""
local id, owner = ARGV[2], ARGV[3]
local leased = tonumber(ARGV[7]) > 0
redis.call('HSET', P .. 'job:' .. id, 'owner', owner, 'kind', ARGV[4], 'model', ARGV[5],
  'payload', ARGV[6], 'state', 'queued', 'attempt', '1', 'worker', '', 'cancel', '0',
  'message', '', 'enqueued_at', stamp(now()), 'leased', leased and '1' or '0')
if leased then redis.call('SET', P .. 'lease:' .. id, '1', 'PX', ARGV[7]) end
redis.call('RPUSH', P .. 'queue:' .. owner, id)
-- an owner with nothing queued goes to the front: their one job waits behind no one's
if not redis.call('LPOS', P .. 'ring', owner) then redis.call('LPUSH', P .. 'ring', owner) end
return redis.call('LLEN', P .. 'queue:' .. owner)
"""

# ARGV: P, id, owner, worker, incarnation -> attempt handed out, or 0 if the job is no
# longer the owner's queued head or the worker is gone or busy.
CLAIM = r"""
local id, owner, worker = ARGV[2], ARGV[3], ARGV[4]
local job, queue = P .. 'job:' .. id, P .. 'queue:' .. owner
if redis.call('HGET', job, 'state') ~= 'queued' then return 0 end
if redis.call('LINDEX', queue, 0) ~= id then return 0 end
if redis.call('EXISTS', P .. 'busy:' .. worker) == 1 then return 0 end
if redis.call('EXISTS', P .. 'worker:' .. worker) == 0 then return 0 end
redis.call('LPOP', queue)
redis.call('HSET', job, 'state', 'dispatched', 'worker', worker, 'incarnation', ARGV[5],
  'dispatched_at', stamp(now()))
redis.call('HDEL', job, 'ahead')
redis.call('SADD', P .. 'active', id)
redis.call('SET', P .. 'busy:' .. worker, id)
redis.call('LREM', P .. 'ring', 0, owner)
if redis.call('LLEN', queue) > 0 then redis.call('RPUSH', P .. 'ring', owner) end
redis.call('HINCRBY', P .. 'stats', 'dispatched', 1)
return tonumber(redis.call('HGET', job, 'attempt'))
"""

# ARGV: P, id, worker, attempt -> 1 if the claim was undone (sending the task failed)
UNCLAIM = r"""
local id = ARGV[2]
local job = P .. 'job:' .. id
if not holds(id, {dispatched = true}, ARGV[3], ARGV[4]) then return 0 end
if redis.call('HGET', job, 'cancel') == '1' then settle(id, 'cancelled', nil) return 1 end
local owner = redis.call('HGET', job, 'owner')
redis.call('HSET', job, 'state', 'queued', 'worker', '')
redis.call('LPUSH', P .. 'queue:' .. owner, id)
redis.call('LREM', P .. 'ring', 0, owner)
redis.call('LPUSH', P .. 'ring', owner)
redis.call('SREM', P .. 'active', id)
unbusy(ARGV[3], id)
redis.call('HINCRBY', P .. 'stats', 'dispatched', -1)
return 1
"""

# ARGV: P, id -> 'cancelled' | 'cancelling' | the final state | 'unknown'
CANCEL = r"""
return cancel(ARGV[2], nil)
"""

# ARGV: P, id, lease ms -> 1 if the waiter still holds the job (lease extended, or taken
# again after a stall that no dispatch pass noticed), 0 if the job was stopped or ended.
RENEW = r"""
local id = ARGV[2]
local lease = P .. 'lease:' .. id
if redis.call('PEXPIRE', lease, ARGV[3]) == 1 then return 1 end
local f = redis.call('HMGET', P .. 'job:' .. id, 'state', 'cancel', 'leased')
local live = f[1] == 'queued' or f[1] == 'dispatched' or f[1] == 'running'
if live and f[2] ~= '1' and f[3] == '1' then
  redis.call('SET', lease, '1', 'PX', ARGV[3])
  return 1
end
return 0
"""

# ARGV: P, reason, id1, id2, ... -> the ids stopped because nobody awaits them any more
# A job enqueued with a lease whose lease key has lapsed lost its waiting app process:
# it is cancelled as Stop would (queued: at once; running: at its next step). Checked
# and done here, in one script, so a waiter renewing at the same moment either renews
# first (the job stays) or finds it stopped (RENEW answers 0): never half of each.
ABANDONED = r"""
local stopped = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', P .. 'job:' .. id, 'state', 'leased', 'cancel')
  local live = f[1] == 'queued' or ((f[1] == 'dispatched' or f[1] == 'running') and f[3] ~= '1')
  if live and f[2] == '1' and redis.call('EXISTS', P .. 'lease:' .. id) == 0 then
    cancel(id, ARGV[2])
    stopped[#stopped + 1] = id
  end
end
return stopped
"""

# ARGV: P, id, worker, attempt, max_attempts, force, message
#   -> 'retried' | 'failed' | 'cancelled' | '' (worker alive after all, or job moved on)
# A job whose worker's heartbeat lapsed goes back to the front of its owner's list, and
# the owner to the front of the ring: it has already waited its turn once.
RECOVER = r"""
local id, worker, attempt = ARGV[2], ARGV[3], ARGV[4]
local job = P .. 'job:' .. id
if not holds(id, {dispatched = true, running = true}, worker, attempt) then return '' end
if ARGV[6] ~= '1' and redis.call('EXISTS', P .. 'worker:' .. worker) == 1 then return '' end
if redis.call('HGET', job, 'cancel') == '1' then settle(id, 'cancelled', nil) return 'cancelled' end
if tonumber(attempt) >= tonumber(ARGV[5]) then
  settle(id, 'failed', ARGV[7])
  return 'failed'
end
local owner = redis.call('HGET', job, 'owner')
local next_attempt = tonumber(attempt) + 1
redis.call('HSET', job, 'state', 'queued', 'attempt', tostring(next_attempt), 'worker', '',
  'started_at', '')
redis.call('LPUSH', P .. 'queue:' .. owner, id)
redis.call('LREM', P .. 'ring', 0, owner)
redis.call('LPUSH', P .. 'ring', owner)
redis.call('SREM', P .. 'active', id)
unbusy(worker, id)
redis.call('HINCRBY', P .. 'stats', 'retried', 1)
publish(id, {type = 'retry', attempt = next_attempt})
return 'retried'
"""

# ARGV: P, id, worker, attempt -> the payload, or nil (stale message, or cancelled before
# it started: then the job is settled as cancelled here)
START = r"""
local id = ARGV[2]
local job = P .. 'job:' .. id
if not holds(id, {dispatched = true}, ARGV[3], ARGV[4]) then return false end
if redis.call('HGET', job, 'cancel') == '1' then settle(id, 'cancelled', nil) return false end
local t = now()
redis.call('HSET', job, 'state', 'running', 'started_at', stamp(t))
if ARGV[4] == '1' then
  local enqueued = tonumber(redis.call('HGET', job, 'enqueued_at'))
  redis.call('HINCRBYFLOAT', P .. 'stats', 'wait_seconds_sum', t - enqueued)
  redis.call('HINCRBY', P .. 'stats', 'wait_count', 1)
end
publish(id, {type = 'state', state = 'running'})
return redis.call('HGET', job, 'payload')
"""

# ARGV: P, id, worker, attempt, result -> 1 if this call finished the job
FINISH = r"""
local id = ARGV[2]
if not holds(id, {running = true}, ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', P .. 'job:' .. id, 'result', ARGV[5])
settle(id, 'succeeded', nil)
return 1
"""

# ARGV: P, id, worker, attempt, message, error, cancelled('1'|'0') -> 1 if this call ended it
FAIL = r"""
local id = ARGV[2]
if not holds(id, {running = true}, ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', P .. 'job:' .. id, 'error', ARGV[6])
if ARGV[7] == '1' then settle(id, 'cancelled', ARGV[5]) else settle(id, 'failed', ARGV[5]) end
return 1
"""

# ARGV: P, name, info json, ttl ms -> 1 if the dispatchers were woken
# A worker that (re)appears free wakes them; one that became free by finishing a job
# already did through `settle`, and every dispatcher also looks on its own tick, so the
# beats of an idle worker do not set off a pass every second in every app process.
HEARTBEAT = r"""
local name = ARGV[2]
local before = redis.call('SET', P .. 'worker:' .. name, ARGV[3], 'PX', ARGV[4], 'GET')
redis.call('SADD', P .. 'workers', name)
if not before and redis.call('EXISTS', P .. 'busy:' .. name) == 0 then
  kick('free')
  return 1
end
return 0
"""

# ARGV: P, id1, ahead1, id2, ahead2, ... -> how many positions changed
POSITIONS = r"""
local changed = 0
for i = 2, #ARGV, 2 do
  local id, ahead = ARGV[i], ARGV[i + 1]
  local job = P .. 'job:' .. id
  local f = redis.call('HMGET', job, 'state', 'ahead')
  if f[1] == 'queued' and f[2] ~= ahead then
    redis.call('HSET', job, 'ahead', ahead)
    publish(id, {type = 'position', ahead = tonumber(ahead)})
    changed = changed + 1
  end
end
return changed
"""

# ARGV: P, owner -> 1 if an owner with an empty list was dropped from the ring
TIDY = r"""
local owner = ARGV[2]
if redis.call('LLEN', P .. 'queue:' .. owner) == 0 then
  return redis.call('LREM', P .. 'ring', 0, owner)
end
return 0
"""

# ARGV: P, id -> 1 if a finished job's hash (and its waiter's lease) was dropped
FORGET = r"""
local state = redis.call('HGET', P .. 'job:' .. ARGV[2], 'state')
if state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  redis.call('DEL', P .. 'lease:' .. ARGV[2])
  return redis.call('DEL', P .. 'job:' .. ARGV[2])
end
return 0
"""

# KEYS: lock; ARGV: token -> 1 if this holder released it
RELEASE_LOCK = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SOURCES = {
    "enqueue": ENQUEUE,
    "claim": CLAIM,
    "unclaim": UNCLAIM,
    "cancel": CANCEL,
    "renew": RENEW,
    "abandoned": ABANDONED,
    "recover": RECOVER,
    "start": START,
    "finish": FINISH,
    "fail": FAIL,
    "heartbeat": HEARTBEAT,
    "positions": POSITIONS,
    "tidy": TIDY,
    "forget": FORGET,
}


@dataclass(frozen=True)
class BoardScripts:
    """The scripts registered on one client (sync or asyncio: the same Lua)."""

    enqueue: Any
    claim: Any
    unclaim: Any
    cancel: Any
    renew: Any
    abandoned: Any
    recover: Any
    start: Any
    finish: Any
    fail: Any
    heartbeat: Any
    positions: Any
    tidy: Any
    forget: Any
    release_lock: Any


def register(client: Any) -> BoardScripts:
    """Register every script on `client` (redis.Redis or redis.asyncio.Redis)."""
    scripts = {name: client.register_script(_PRELUDE + src) for name, src in _SOURCES.items()}
    return BoardScripts(**scripts, release_lock=client.register_script(RELEASE_LOCK))
