//! The Lua scripts behind every multi-key write. Each runs atomically in Redis, which is what makes
//! "create once per idempotency key" and "write only if nobody wrote since we read" hold under
//! any number of dispatchers and workers.
//!
//! Two scripts build a key from an ARGV prefix (the job an idempotency key points at, worker keys
//! to prune). That is fine on a single Redis or a replicated primary, not on Redis Cluster.

use std::sync::LazyLock;

use redis::Script;

/// Create a job record unless its idempotency key (or its id) is already taken.
///
/// KEYS: 1 job, 2 tenant jobs zset, 3 tenant state zset, 4 idempotency key, 5 tenant in-flight
/// counter, 6 model counters hash, 7 models set, 8 the tenant's daily charge counter.
/// ARGV: 1 status JSON, 2 status TTL, 3 created ms, 4 id, 5 idempotency TTL, 6 has idempotency
/// key ('1'/'0'), 7 job key prefix, 8 tenant, 9 counts as in flight ('1'/'0'), 10 model,
/// 11 terminal counter field or '', 12 most jobs the tenant may have in flight ('' for no limit),
/// 13 digest of the request ('' for none), kept in the record's `digest` field, 14 most jobs the
/// tenant may have queued ('' for no limit), 15 pixel-steps the tenant may be charged today
/// ('' for no budget), 16 the job's cost in pixel-steps, 17 TTL of the charge counter.
/// Lifecycle: KEYS 9 expiry zset, 10 the job's cancel flag; ARGV 18 expiry in ms of a job
/// created finished ('' for none), 19 the TTL its record and indexes keep at least ('' for none),
/// 20 its expiry member.
///
/// Returns `{'created'}`, `{'existing', data}`, `{'different', id}` (the key or id stands for a
/// job whose recorded digest is another; a record without one counts as the same request),
/// `{'taken'}` (id used by another tenant), `{'limited', n}` (the tenant already has n ≥ the
/// limit in flight) or `{'quota', name, used}` (over a quota; limits and quotas are checked
/// after the retry cases, so a retry of an accepted job still gets that job). A job charged
/// against the daily budget keeps its charge in the record's `charge` field, for a discard to
/// give back.
pub(crate) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{KEEP_AT_LEAST}{}",
        r#"
local function retry_of(key, id)
  local record = redis.call('HMGET', key, 'data', 'digest')
  if not record[1] then
    return nil
  end
  if ARGV[13] ~= '' and record[2] and record[2] ~= ARGV[13] then
    return {'different', id}
  end
  return {'existing', record[1]}
end
if ARGV[6] == '1' then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    local answer = retry_of(ARGV[7] .. existing, existing)
    if answer then
      return answer
    end
    -- The job the key named has expired, so nothing can be returned for it: this submission
    -- is new and takes the key over below.
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- The same id again (a client-chosen id resubmitted) is a retry for its own tenant only.
  if redis.call('HGET', KEYS[1], 'tenant') == ARGV[8] then
    return retry_of(KEYS[1], ARGV[4]) or {'taken'}
  end
  return {'taken'}
end
if ARGV[12] ~= '' and ARGV[9] == '1' then
  local in_flight = tonumber(redis.call('GET', KEYS[5]) or '0') or 0
  if in_flight >= tonumber(ARGV[12]) then
    return {'limited', tostring(in_flight)}
  end
end
if ARGV[14] ~= '' then
  local queued = redis.call('ZCARD', KEYS[3])
  if queued >= tonumber(ARGV[14]) then
    return {'quota', 'max_queued_jobs', tostring(queued)}
  end
end
local charge = 0
if ARGV[15] ~= '' then
  local used = tonumber(redis.call('GET', KEYS[8]) or '0') or 0
  charge = tonumber(ARGV[16])
  if used + charge > tonumber(ARGV[15]) then
    return {'quota', 'daily_megapixel_steps', string.format('%d', used)}
  end
end
redis.call('HSET', KEYS[1], 'rev', '1', 'data', ARGV[1], 'tenant', ARGV[8])
if ARGV[13] ~= '' then
  redis.call('HSET', KEYS[1], 'digest', ARGV[13])
end
if charge > 0 then
  redis.call('INCRBY', KEYS[8], ARGV[16])
  redis.call('EXPIRE', KEYS[8], ARGV[17])
  redis.call('HSET', KEYS[1], 'charge', ARGV[16])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
-- Never shortened: the indexes may list a finished job kept longer (its retention).
keep_at_least({KEYS[2], KEYS[3]}, tonumber(ARGV[2]))
if ARGV[6] == '1' then
  redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[5])
  -- Named in the record so that removing the job takes its key too.
  redis.call('HSET', KEYS[1], 'idem', KEYS[4])
end
if ARGV[9] == '1' then
  redis.call('INCR', KEYS[5])
end
redis.call('HINCRBY', KEYS[6], 'accepted', 1)
if ARGV[11] ~= '' then
  redis.call('HINCRBY', KEYS[6], ARGV[11], 1)
end
redis.call('SADD', KEYS[7], ARGV[10])
-- ---- lifecycle ----
-- A cancel flag without a record is the mark a removed job leaves; a new job under its id
-- (a client reusing its own id) must not inherit it.
redis.call('DEL', KEYS[10])
if ARGV[18] ~= '' then
  redis.call('ZADD', KEYS[9], ARGV[18], ARGV[20])
end
if ARGV[19] ~= '' then
  keep_at_least({KEYS[1], KEYS[2], KEYS[3]}, tonumber(ARGV[19]))
end
-- ---- end lifecycle ----
return {'created'}
"#
    ))
});

/// Compare-and-set a job record, move it between state indexes, keep the counters and publish
/// the event, all in one step so that events are published in revision order and a terminal
/// transition is counted exactly once.
///
/// A finishing transition also adds the job's usage to the hour's usage hash and to the
/// all-time totals.
///
/// A change the job's webhook asks for pushes its delivery onto the webhook outbox in the same
/// step, so a state change is never written without its delivery (nor a delivery queued for a
/// write that lost its compare-and-set). A progress delivery is dropped when the job's last one
/// was queued less than the throttle interval ago (field `webhook_progress_at`).
///
/// KEYS: 1 job, 2 old state zset, 3 new state zset, 4 tenant jobs zset, 5 tenant in-flight
/// counter, 6 model counters hash, 7 usage hash of the hour the job finished in, 8 usage totals
/// hash, 9 expiry zset (lifecycle), 10 webhook outbox list.
/// ARGV: 1 expected rev, 2 new status JSON, 3 status TTL, 4 id, 5 created ms, 6 finishes the job
/// ('1'/'0'), 7 counter field, 8 event channel, 9 event JSON, 10 usage TTL, 11-13 lifecycle
/// (below), 14 webhook delivery JSON ('' for none), 15 progress throttle in ms ('' unless a
/// progress delivery), 16 now in ms, 17.. pairs of usage field and increment.
///
/// Lifecycle: KEYS 9 expiry zset; ARGV 11 the job's expiry in ms ('' for none), 12 the TTL its
/// record and indexes keep at least ('' for none), 13 its expiry member. A finishing job joins the
/// expiry set at its expiry, or at 0 (due at once) when its removal was asked for while it ran.
///
/// Returns the new rev, 0 when the rev moved on (someone else wrote), -1 when the job is gone.
pub(crate) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{KEEP_AT_LEAST}{}",
        r#"
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then
  return -1
end
if rev ~= ARGV[1] then
  return 0
end
local next = tonumber(rev) + 1
redis.call('HSET', KEYS[1], 'rev', string.format('%d', next), 'data', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if KEYS[2] ~= KEYS[3] then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
end
-- Index TTLs follow their longest-lived record, so an index never expires before a job it lists.
keep_at_least({KEYS[3], KEYS[4]}, tonumber(ARGV[3]))
if ARGV[6] == '1' then
  -- Never below zero: a counter lost or rebuilt while jobs ran must not go negative.
  if tonumber(redis.call('GET', KEYS[5]) or '0') > 0 then
    redis.call('DECR', KEYS[5])
  end
  redis.call('HINCRBY', KEYS[6], ARGV[7], 1)
  for i = 17, #ARGV - 1, 2 do
    redis.call('HINCRBY', KEYS[7], ARGV[i], ARGV[i + 1])
    redis.call('HINCRBY', KEYS[8], ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
-- ---- lifecycle ----
if ARGV[6] == '1' then
  if redis.call('HEXISTS', KEYS[1], 'remove') == 1 then
    redis.call('ZADD', KEYS[9], 0, ARGV[13])
  elseif ARGV[11] ~= '' then
    redis.call('ZADD', KEYS[9], ARGV[11], ARGV[13])
  end
  if ARGV[12] ~= '' then
    keep_at_least({KEYS[1], KEYS[3], KEYS[4]}, tonumber(ARGV[12]))
  end
end
-- ---- end lifecycle ----
if ARGV[14] ~= '' then
  local due = true
  if ARGV[15] ~= '' then
    local last = tonumber(redis.call('HGET', KEYS[1], 'webhook_progress_at') or '0') or 0
    due = tonumber(ARGV[16]) - last >= tonumber(ARGV[15])
    if due then
      redis.call('HSET', KEYS[1], 'webhook_progress_at', ARGV[16])
    end
  end
  if due then
    redis.call('LPUSH', KEYS[10], ARGV[14])
  end
end
redis.call('PUBLISH', ARGV[8], ARGV[9])
return next
"#
    ))
});

/// Set the cancel flag of a job that exists.
///
/// KEYS: 1 job, 2 cancel flag. ARGV: 1 TTL. Returns 1, or 0 when the job does not exist.
pub(crate) static REQUEST_CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
return 1
"#,
    )
});

/// Note on a job's record that its message was published (confirmed by the broker): `1` after
/// its one publish, `again` once it was published a second time (two messages may exist). `1`
/// never replaces `again`: a dispatcher's late mark must not hide a worker's hand-back copy.
///
/// KEYS: 1 job. ARGV: 1 the mark. Returns 1, or 0 when the job does not exist (nothing is
/// written then).
pub(crate) static MARK_PUBLISHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[1] ~= '1' or redis.call('HGET', KEYS[1], 'published') ~= 'again' then
  redis.call('HSET', KEYS[1], 'published', ARGV[1])
end
return 1
"#,
    )
});

// ---- lifecycle: removing finished jobs when their retention has passed ----

/// Lua: `keep_at_least(keys, ttl)` raises each key's TTL to `ttl` seconds where it is shorter
/// (a key without one gets it; a missing key stays missing), so a write never shortens a record
/// or an index that a job kept longer (its retention) needs.
const KEEP_AT_LEAST: &str = r#"
local function keep_at_least(keys, ttl)
  for _, key in ipairs(keys) do
    local left = redis.call('TTL', key)
    if left ~= -2 and left < ttl then
      redis.call('EXPIRE', key, ttl)
    end
  end
end
"#;

/// Claim due jobs for one sweeper: every member of the expiry set scored at or below now (at
/// most a batch) is rescored to the end of the sweeper's lease, so no other sweeper takes it
/// meanwhile, and one that is still there when the lease ends (its sweeper crashed) is due again.
///
/// KEYS: 1 expiry zset. ARGV: 1 now in ms, 2 lease end in ms, 3 most members.
/// Returns the claimed members.
pub(crate) static CLAIM_EXPIRED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
"#,
    )
});

/// Ask for a job's removal: a finished job in the expiry set becomes due at once; any other job
/// is marked (`remove` field), and the update that finishes it makes it due at once.
///
/// KEYS: 1 job, 2 expiry zset. ARGV: 1 expiry member.
/// Returns 2 when the job was finished (now due), 1 when marked, 0 when there is no such job.
pub(crate) static MARK_REMOVAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  redis.call('ZADD', KEYS[2], 0, ARGV[1])
  return 2
end
redis.call('HSET', KEYS[1], 'remove', '1')
return 1
"#,
    )
});

/// Remove a job's record, its index entries, its expiry entry and the idempotency key that names
/// it, leaving its cancel flag set so that a message of the job still on a queue is acked unrun
/// instead of recreating the job. Its webhook delivery log goes with it. Usage, counters and
/// quota charges are left as they are.
///
/// The flag lives short (ARGV 4) only for a job that had exactly one message — published once by
/// a dispatcher (`published` = `1`), never handed back by a stopping worker — and that a worker
/// finished: that message was acked, or is returned first to the next consumer when its worker
/// died before the ack. Any other job gets the long one (ARGV 3): a cancelled job's message may
/// wait behind a whole backlog, and so may a second copy (a dispatcher's second publish, a
/// hand-back, a foreign producer's own). A record whose data merely mentions
/// `"state":"cancelled"` (in its metadata) also gets the long one: only ever longer.
///
/// KEYS: 1 job, 2 tenant jobs zset, 3–7 the tenant's state zsets, 8 expiry zset, 9 cancel flag,
/// 10 webhook delivery log.
/// ARGV: 1 id, 2 expiry member, 3 cancel flag TTL of a cancelled job (and when the record is
/// gone and no flag is left), 4 cancel flag TTL of a job a worker finished.
/// Returns 1 when a record was removed, 0 when there was none (removed before, or expired).
pub(crate) static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local record = redis.call('HMGET', KEYS[1], 'data', 'idem', 'published')
if record[1] then
  local ttl = ARGV[3]
  if record[3] == '1' and string.find(record[1], '"handbacks":0', 1, true)
      and not string.find(record[1], '"state":"cancelled"', 1, true) then
    ttl = ARGV[4]
  end
  redis.call('SET', KEYS[9], '1', 'EX', ttl)
  if record[2] and redis.call('GET', record[2]) == ARGV[1] then
    redis.call('DEL', record[2])
  end
elseif redis.call('EXISTS', KEYS[9]) == 0 then
  redis.call('SET', KEYS[9], '1', 'EX', ARGV[3])
end
local removed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[10])
for i = 2, 7 do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
redis.call('ZREM', KEYS[8], ARGV[2])
return removed
"#,
    )
});

// ---- end lifecycle ----

/// Drop worker ids whose heartbeat key has expired. Checking and removing in one step keeps a
/// worker that heartbeats right now from being removed from the set.
///
/// KEYS: 1 workers set. ARGV: 1 worker key prefix, 2.. ids. Returns how many were removed.
pub(crate) static PRUNE_WORKERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return removed
"#,
    )
});

/// Recompute a tenant's in-flight counter from its `queued` and `running` indexes, dropping
/// index entries whose record has expired.
///
/// KEYS: 1 in-flight counter, 2 queued zset, 3 running zset. ARGV: 1 job key prefix.
/// Returns the new count.
pub(crate) static RECOUNT_IN_FLIGHT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for _, index in ipairs({KEYS[2], KEYS[3]}) do
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('EXISTS', ARGV[1] .. id) == 1 then
      n = n + 1
    else
      redis.call('ZREM', index, id)
    end
  end
end
redis.call('SET', KEYS[1], n)
return n
"#,
    )
});

/// Undo a create whose job never reached the queue: delete the record if nothing has written to
/// it since (rev 1), with its index entries, its idempotency key (if it still names this job),
/// its in-flight count, its `accepted` count and its charge against the daily budget.
///
/// KEYS: 1 job, 2 tenant jobs zset, 3 tenant state zset, 4 idempotency key, 5 tenant in-flight
/// counter, 6 model counters hash, 7 the tenant's daily charge counter of the job's creation day.
/// ARGV: 1 id, 2 has idempotency key ('1'/'0'), 3 counted as in flight ('1'/'0').
/// Returns 1 if discarded, 0 if the job is gone or has moved on.
pub(crate) static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'rev') ~= '1' then
  return 0
end
local charge = tonumber(redis.call('HGET', KEYS[1], 'charge') or '0') or 0
if charge > 0 then
  local left = tonumber(redis.call('GET', KEYS[7]) or '0') or 0
  redis.call('DECRBY', KEYS[7], math.min(charge, left))
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] == '1' and redis.call('GET', KEYS[4]) == ARGV[1] then
  redis.call('DEL', KEYS[4])
end
if ARGV[3] == '1' and tonumber(redis.call('GET', KEYS[5]) or '0') > 0 then
  redis.call('DECR', KEYS[5])
end
if tonumber(redis.call('HGET', KEYS[6], 'accepted') or '0') > 0 then
  redis.call('HINCRBY', KEYS[6], 'accepted', -1)
end
return 1
"#,
    )
});
