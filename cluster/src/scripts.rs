//! The Lua scripts of membership (see [`crate::lease`] for the keys): every
//! decision is one script, so it sees one state of Redis. Each script runs
//! with Redis's clock in ms as `now`.
//!
//! The node scripts (`JOIN`, `RENEW`, `DONE`, `RELEASE`) take the keys of
//! one node, in the order of [`crate::lease::Keys::of`]: its lease, its
//! `node` hash, the `nodes` set, its takeover, its lost mark.

/// Redis's clock in ms, first in every script.
const NOW_MS: &str =
    "local t = redis.call('TIME')\nlocal now = t[1] * 1000 + math.floor(t[2] / 1000)\n";

/// Shows the node in the list (the `node` hash and the `nodes` set).
/// ARGV: token, lease ms, name, api, started (`JOIN` and `RENEW` share it).
const SHOW: &str = "
local function show(started, running)
  redis.call('HSET', KEYS[2], 'token', ARGV[1], 'api', ARGV[4], 'started', started, 'renewed', now, 'running', running)
  redis.call('SADD', KEYS[3], ARGV[3])
end
";

/// Takes the lease. ARGV: token, lease ms, name, api. Returns {state,
/// detail}: `busy` (a survivor takes a previous run over: its token), or
/// `replaced` (a previous run's lease was replaced: that run is lost) or
/// `ok`, with this run's start (ms): after any lost mark, so a run declared
/// lost before can never pass for this one.
pub(crate) const JOIN: &str = "
local holder = redis.call('GET', KEYS[4])
if holder then return {'busy', holder} end
local started = now
local lost = tonumber(redis.call('GET', KEYS[5]) or '0')
local old = redis.call('GET', KEYS[1])
if old then
  redis.call('SET', KEYS[5], now, 'PX', 604800000)
  lost = now
end
if lost >= started then started = lost + 1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
show(started, 0)
if old then return {'replaced', tostring(started)} end
return {'ok', tostring(started)}
";

/// Renews the lease. ARGV: token, lease ms, name, api, started, running.
/// Returns `ok`, `again` (the lease was gone and is taken again: Redis
/// lost it, or this run was away but not declared lost), `lost` (declared
/// lost, or being taken over) or `taken` (another run replaced it).
pub(crate) const RENEW: &str = "
local lost = redis.call('GET', KEYS[5])
if lost and tonumber(lost) >= tonumber(ARGV[5]) then return 'lost' end
local cur = redis.call('GET', KEYS[1])
local state = 'ok'
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif cur then
  return 'taken'
elseif redis.call('EXISTS', KEYS[4]) == 1 then
  return 'lost'
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  state = 'again'
end
show(ARGV[5], ARGV[6])
return state
";

/// Claims the takeover of a node whose lease is gone. KEYS: own lease,
/// its lease, its takeover, its lost mark; ARGV: own token, lease ms.
/// Returns -1 (own lease gone: judge nothing), 0 (alive, or taken over by
/// another) or 1 (this run takes it over; it is declared lost now).
pub(crate) const CLAIM: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('SET', KEYS[4], now, 'PX', 604800000)
return 1
";

/// Keeps a takeover claimed. KEYS: its takeover; ARGV: own token, lease ms.
/// Returns 1, or 0 when the claim is no longer this run's.
pub(crate) const KEEP: &str = "
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
";

/// Ends a takeover. ARGV: own token, name, done (1: the node leaves the
/// list) or given up (0).
pub(crate) const DONE: &str = "
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[4])
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  redis.call('SREM', KEYS[3], ARGV[2])
end
return 1
";

/// Gives the lease up. ARGV: token, name.
pub(crate) const RELEASE: &str = "
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
";

/// `EVAL` of `body` with `now` (and `show` for the scripts that use it),
/// and its `keys`.
pub(crate) fn eval(body: &str, keys: &[String]) -> redis::Cmd {
    let helpers = if body.contains("show(") { SHOW } else { "" };
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(format!("{NOW_MS}{helpers}{body}"))
        .arg(keys.len())
        .arg(keys);
    cmd
}
