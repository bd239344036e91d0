"""Exactly-once, time-ordered ingestion of one user's events: one Lua script, atomic in Redis.

Each call of the script touches three keys of one hash slot (the user's), so it runs the same on one
endpoint and on a Redis Cluster:

- `seqrec:hist:{<user>}`: the history list, `"<timestamp_ms>:<item_id>"`, kept in timestamp order;
  a late event is inserted at its place (the script walks back from the newest entry, so an event that
  arrives in order costs one RPUSH), ties keep arrival order, and the list is trimmed to the cap;
- `seqrec:eid:{<user>}`: the event ids seen for the user in the retention window (a sorted set scored
  by the time they arrived); an id already there is acknowledged as a duplicate and not applied again;
- the event log of the slot (`event_log.log_key`): every applied event, appended to a stream that no
  per-user cap trims, for the next training.

Because a repeated id is never applied twice, any retry (a client's, the gateway's, redis-py's own
resend after a timeout) is harmless; events that come without an id get one from the first seqrec
service that sees them, so retries inside seqrec are covered too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

KEY_PREFIX = "seqrec:hist:"
EVENT_IDS_PREFIX = "seqrec:eid:"
DEFAULT_ID_RETENTION_S = 24 * 3600  # how long a retried event id is recognised

# KEYS: history, event ids, event log. ARGV: cap, now_ms, retention_ms, user, then (timestamp_ms,
# item_id, event_id, recommendation_id, event_type) quintuples sorted by timestamp. Returns {applied,
# duplicates, the ids of the applied events...}: the caller attributes each applied event once.
APPEND_SCRIPT = """
local cap, now, keep = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local user = ARGV[4]
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - keep)
local fresh, duplicates, applied = {}, 0, {}
for i = 5, #ARGV, 5 do
  local ts, item, id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZADD', KEYS[2], 'NX', now, id) == 1 then
    fresh[#fresh + 1] = {tonumber(ts), ts .. ':' .. item}
    applied[#applied + 1] = id
    redis.call('XADD', KEYS[3], '*', 'u', user, 'i', item, 't', ts, 'e', id, 'r', ARGV[i + 3], 'k', ARGV[i + 4])
  else
    duplicates = duplicates + 1
  end
end
if #fresh == 0 then return {0, duplicates} end
redis.call('PEXPIRE', KEYS[2], keep)
local function stamp(entry) return tonumber(string.match(entry, '^(%-?%d+):')) end
-- The stored entries newer than the oldest new event: they are taken off and merged back in order.
local oldest, kept, tail = fresh[1][1], redis.call('LLEN', KEYS[1]), {}
while kept > 0 do
  local from = math.max(kept - 64, 0)
  local chunk = redis.call('LRANGE', KEYS[1], from, kept - 1)
  local j = #chunk
  while j >= 1 and stamp(chunk[j]) > oldest do j = j - 1 end
  for k = #chunk, j + 1, -1 do tail[#tail + 1] = chunk[k] end
  kept = from + j
  if j >= 1 then break end
end
if #tail > 0 then
  if kept == 0 then redis.call('DEL', KEYS[1]) else redis.call('LTRIM', KEYS[1], 0, kept - 1) end
end
-- `tail` is newest first; merge it (stored first on ties) with `fresh` (oldest first).
local out, a, b = {}, #tail, 1
while a >= 1 or b <= #fresh do
  if b > #fresh or (a >= 1 and stamp(tail[a]) <= fresh[b][1]) then
    out[#out + 1] = tail[a]; a = a - 1
  else
    out[#out + 1] = fresh[b][2]; b = b + 1
  end
  if #out == 1000 then redis.call('RPUSH', KEYS[1], unpack(out)); out = {} end
end
if #out > 0 then redis.call('RPUSH', KEYS[1], unpack(out)) end
redis.call('LTRIM', KEYS[1], -cap, -1)
return {#fresh, duplicates, unpack(applied)}
"""


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    timestamp_ms: int
    event_id: str = ""  # unique per user; "" only before a seqrec service gave it one
    recommendation_id: str = ""  # the served list that led to it, if the client says (attribution)
    event_type: str = ""  # view, click, add_to_cart, purchase; "" when not given


@dataclass(frozen=True)
class Ingested:
    """What one ingestion did: events applied, events acknowledged as repeats of applied ones, and the
    applied events themselves (so each is attributed exactly once)."""

    applied: int = 0
    duplicates: int = 0
    fresh: tuple[Event, ...] = field(default=(), compare=False)  # equality is about the counts

    def __add__(self, other: Ingested) -> Ingested:
        return Ingested(self.applied + other.applied, self.duplicates + other.duplicates, self.fresh + other.fresh)


def _escape(user_id: str) -> str:
    return user_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def history_key(user_id: str) -> str:
    """`seqrec:hist:{<user>}`; `%`, `{` and `}` in the id are percent-escaped, so the hash tag is the
    whole id and distinct ids never share a key."""
    return f"{KEY_PREFIX}{{{_escape(user_id)}}}"


def event_ids_key(user_id: str) -> str:
    """`seqrec:eid:{<user>}`: the user's recent event ids, in the history's hash slot."""
    return f"{EVENT_IDS_PREFIX}{{{_escape(user_id)}}}"


def script_args(user_id: str, events: Sequence[Event], cap: int, now_ms: int, retention_ms: int) -> list:
    """ARGV of APPEND_SCRIPT for one user's events (sorted by timestamp here, stably)."""
    args: list = [cap, now_ms, retention_ms, user_id]
    for event in sorted(events, key=lambda e: e.timestamp_ms):
        args += [event.timestamp_ms, event.item_id, event.event_id, event.recommendation_id, event.event_type]
    return args
