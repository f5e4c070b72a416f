"""Endpoint quotas: the requests and tokens per minute an endpoint's account allows, shared by every worker.

An endpoint's room comes from its `rpm_limit` and `tpm_limit` (the admin) and from what the provider
says in its answers (`x-ratelimit-limit-*`, `x-ratelimit-remaining-*`, `x-ratelimit-reset-*`, OpenAI's
durations like `6m0s`, `1s`, `20ms`): the lower limit counts, and after an answer said R requests (or
tokens) are left until its reset, no more than R are sent before it (counted from that call on).

State, with Redis (`Quota.admit`, one server-side Lua script per admission, registered with redis-py's
`register_script`: nothing is read, changed and written back from Python):

- `quota:<upstream>:<endpoint>:log`: a sorted set of the reservations in the window (`QUOTA_WINDOW_SECONDS`,
  60, plus `QUOTA_MARGIN_SECONDS`: a request arrives a little after its admission, and the provider
  counts arrivals), scored by the Redis clock in milliseconds: the window's requests are counted
  exactly (a sliding log, never a fixed minute: at most `rpm_limit` in *any* window);
- `...:tok`: each reservation's tokens (its prompt estimate plus `max_tokens`, corrected from the
  answer's usage); `...:st`: their sum, the running totals and what the provider last announced.
  Entries leave with the window (the script drops them as it passes; the keys expire when idle), so a
  worker killed mid-call leaves nothing held past the window;
- `quota:<upstream>:queue`: the callers waiting for room on any endpoint of the upstream, a sorted
  set scored by (priority, arrival) with a `seen` hash beside it. A caller takes room only when no
  live waiter ranks before it: capacity that frees goes to the highest priority first, FIFO within
  one. A waiter looks again at least every `QUOTA_POLL_MAX` seconds (`seen`); one not seen for
  `STALE_WAITER` seconds (its worker died) is dropped from the head of the queue.

Requests are also spread over the window: each `window / QUOTA_SLICES` holds at most
`ceil(rpm_limit / QUOTA_SLICES)` (providers quantize their limits the same way: 60 a minute may be
enforced as one a second). Under saturation room then frees a little at a time, all through the
window, rather than all at once when a burst leaves it: a high-priority caller waits a slice, not a
window.

Corrections (the answer's usage, the provider's headers) wait in the process and ride on its next
admission's script: the hot path costs one round trip per call, never two. Until they are applied
the room is counted on the estimate, which is never less than what the provider was asked for.

Leases: far from its limits an endpoint need not cost a round trip per call. An admission may ask
for up to `QUOTA_LEASE` requests at once (`Quota.admit(lease=...)`); the script grants k > 1 only
while no caller is queued and k is at most an eighth of every room left (the window's requests, the
slice's, the tokens at this call's size, what the provider's headers said is left), and logs all k
at once (members `<id>`, `<id>~2` .. `<id>~k`, the tokens k times the call's under `<id>`). The
process then admits its next calls from the lease without a round trip (`Quota.leased`), for at
most `lease_seconds` (half `QUOTA_MARGIN_SECONDS`: a leased request reaches the provider within
the margin its log entry is counted with). What a lease did not use (requests, tokens) rides back
on the next admission's script (`ret`); a lease ends early when a call needs more tokens than it
holds, on a 429, and when the provider says less is left than eight times what it still holds. So
every request sent is in the shared log before it is sent, as without leases: the limits stay
exact. What a lease costs: room held by a process that may not use it (an eighth of it at most,
until it is given back), and priority order for at most its k requests and `lease_seconds`: a
queue that forms while a lease is held (another worker found no room, which a lease's eighth makes
unlikely) does not stop the lease's calls; no new lease is granted while anyone waits, and a caller
that already waited never takes one. The admission counts by priority (`admission_state`) count a
lease's requests when it is granted.

Limits learned from a provider's headers are shared too: the process that learns them first (its
quota was inactive) writes them into the endpoint's state at once (`Quota.publish`: the admission
script run for its corrections only) and sets `quota:<upstream>:<endpoint>:learned` in the shared
cache (a day). A pool of several endpoints reads those markers with its shared cooldowns (the same
`get_many`, resilience.client.endpoints: its first choice makes one), a single URL's pool when it is
built (one `get_many`, with the policy's load), so a new worker's first call to such an endpoint is
admitted against the learned limit, and no call gains a round trip.

Without Redis (not configured, or down: `Engine.on_redis`) the same logic runs in process memory:
the limits then hold per process (N workers may send N times the limit), and the README says so.
Used by resilience.client.admission and resilience.client.endpoints only.
"""
from __future__ import annotations

import bisect
import itertools
import json as json_module
import math
import os
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from resilience.cache import default_cache
from resilience.cache.engine import NOT_SERVED
from resilience.client.context import PRIORITIES

#: Seconds a waiter may go unseen before the queue drops it (its worker died).
STALE_WAITER = 3.0
#: Reservations dropped from the log per admission at most (the rest at the next one).
EXPIRE_BATCH = 1000
#: A lease takes at most 1/LEASE_SHARE of any room left, and is given back once less is left than
#: LEASE_SHARE times what it still holds.
LEASE_SHARE = 8

ADMIT_LUA = """
local log, tok, st, queue, seen = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm, tpm, need = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local res, me, rank, stale = ARGV[5], ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local i = 10
for _ = 1, tonumber(ARGV[9]) do
  local kind, id = ARGV[i], ARGV[i + 1]
  local a, b, c = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  i = i + 5
  if kind == 'used' then
    if redis.call('HEXISTS', tok, id) == 1 then
      redis.call('HINCRBY', tok, id, a)
      redis.call('HINCRBY', st, 'tokens', a)
    end
  elseif kind == 'ret' then
    local unused = {}
    for j = a, b do unused[#unused + 1] = id .. '~' .. j end
    if #unused > 0 then redis.call('ZREM', log, unpack(unused)) end
    if c > 0 and redis.call('HEXISTS', tok, id) == 1 then
      redis.call('HINCRBY', tok, id, -c)
      redis.call('HINCRBY', st, 'tokens', -c)
    end
  else
    local since = tonumber(redis.call('HGET', st, 'c' .. kind) or '-1')
    local untl = tonumber(redis.call('HGET', st, 'u' .. kind) or '0')
    local at = tonumber(id)
    if id == 'now' then at = tonumber(redis.call('HGET', st, 'n' .. kind) or '0') end
    if at >= since or untl <= now then
      redis.call('HSET', st, 'r' .. kind, a, 'c' .. kind, at, 'u' .. kind, now + b)
    end
    if c > 0 then redis.call('HSET', st, 'l' .. kind, c) end
  end
end
if ARGV[12 + 5 * tonumber(ARGV[9])] == '1' then
  redis.call('PEXPIRE', st, 86400000)
  return {2, 0, 0}
end
local cutoff = now - window
local batch = tonumber(ARGV[10 + 5 * tonumber(ARGV[9])])
local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, batch)
if #old > 0 then
  local held = redis.call('HMGET', tok, unpack(old))
  local gone = 0
  for j = 1, #old do gone = gone + tonumber(held[j] or '0') end
  redis.call('HDEL', tok, unpack(old))
  redis.call('ZREM', log, unpack(old))
  if gone > 0 then redis.call('HINCRBY', st, 'tokens', -gone) end
end
local head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
while #head > 0 and tonumber(redis.call('HGET', seen, head[1]) or '0') < now - stale do
  redis.call('ZREM', queue, head[1])
  redis.call('HDEL', seen, head[1])
  head = redis.call('ZRANGE', queue, 0, 0, 'WITHSCORES')
end
local mine = false
if #head > 0 then mine = redis.call('ZSCORE', queue, me) end
local score = mine and tonumber(mine) or rank * 1e13 + now
local behind = #head > 0 and head[1] ~= me and tonumber(head[2]) < score
local s = redis.call('HMGET', st, 'tokens', 'nreq', 'ntok', 'lreq', 'ltok', 'rreq', 'creq', 'ureq',
                     'rtok', 'ctok', 'utok')
local tokens, nreq, ntok = tonumber(s[1] or '0'), tonumber(s[2] or '0'), tonumber(s[3] or '0')
local lreq, ltok = tonumber(s[4] or '0'), tonumber(s[5] or '0')
if lreq > 0 and (rpm == 0 or lreq < rpm) then rpm = lreq end
if ltok > 0 and (tpm == 0 or ltok < tpm) then tpm = ltok end
local wait = 0
local count = redis.call('ZCOUNT', log, '(' .. cutoff, '+inf')
if count == 0 and tokens ~= 0 then
  tokens = 0
  redis.call('HSET', st, 'tokens', 0)
end
local ahead = 0
if behind then ahead = redis.call('ZCOUNT', queue, '-inf', '(' .. score) end
if rpm > 0 and count + ahead >= rpm then
  local nth = math.min(count - 1, count - rpm + ahead)
  if nth >= 0 then
    local e = redis.call('ZRANGE', log, nth, nth, 'WITHSCORES')
    if #e > 0 then wait = math.max(wait, tonumber(e[2]) + window - now) end
  end
end
local slices = tonumber(ARGV[11 + 5 * tonumber(ARGV[9])])
local per, recent = 0, 0
if rpm > 0 and slices > 1 then
  local slice = window / slices
  per = math.ceil(rpm / slices)
  recent = redis.call('ZCOUNT', log, '(' .. (now - slice), '+inf')
  if recent >= per then
    local e = redis.call('ZRANGE', log, count - recent, count - recent, 'WITHSCORES')
    if #e > 0 then wait = math.max(wait, tonumber(e[2]) + slice - now) end
  end
  if ahead > 0 then wait = math.max(wait, math.floor(slice * ahead / per)) end
end
if tpm > 0 and tokens > 0 and tokens + need > tpm then
  local e = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  if #e > 0 then wait = math.max(wait, tonumber(e[2]) + window - now) end
end
local ureq = tonumber(s[8] or '0')
if ureq > now and nreq - tonumber(s[7] or '0') >= tonumber(s[6] or '0') then
  wait = math.max(wait, ureq - now)
end
local utok = tonumber(s[11] or '0')
if utok > now and need > 0 and ntok - tonumber(s[10] or '0') + need > tonumber(s[9] or '0') then
  wait = math.max(wait, utok - now)
end
if behind or wait > 0 then
  redis.call('ZADD', queue, 'NX', score, me)
  redis.call('HSET', seen, me, now)
  redis.call('PEXPIRE', queue, window * 2 + 60000)
  redis.call('PEXPIRE', seen, window * 2 + 60000)
  if behind and wait <= 0 then wait = 5 end
  return {0, math.max(wait, 1), behind and 1 or 0}
end
local k = 1
local lease = tonumber(ARGV[13 + 5 * tonumber(ARGV[9])] or '0')
if lease > 1 and #head == 0 then
  local share = @LEASE_SHARE@
  if rpm > 0 then lease = math.min(lease, math.floor((rpm - count) / share)) end
  if per > 0 then lease = math.min(lease, math.floor((per - recent) / share)) end
  if tpm > 0 and need > 0 then lease = math.min(lease, math.floor((tpm - tokens) / (need * share))) end
  if ureq > now then
    lease = math.min(lease, math.floor((tonumber(s[6] or '0') - nreq + tonumber(s[7] or '0')) / share))
  end
  if utok > now and need > 0 then
    local left = tonumber(s[9] or '0') - ntok + tonumber(s[10] or '0')
    lease = math.min(lease, math.floor(left / (need * share)))
  end
  if lease > 1 then k = lease end
end
if k == 1 then
  redis.call('ZADD', log, now, res)
else
  local entries = {now, res}
  for j = 2, k do
    entries[#entries + 1] = now
    entries[#entries + 1] = res .. '~' .. j
  end
  redis.call('ZADD', log, unpack(entries))
end
need = need * k
if need > 0 then
  redis.call('HSET', tok, res, need)
  redis.call('HINCRBY', st, 'tokens', need)
  redis.call('HINCRBY', st, 'ntok', need)
  redis.call('PEXPIRE', tok, window * 2)
end
redis.call('HINCRBY', st, 'nreq', k)
redis.call('PEXPIRE', log, window * 2)
redis.call('PEXPIRE', st, 86400000)
local waits = KEYS[6]
redis.call('HINCRBY', waits, rank .. ':n', k)
if mine then
  redis.call('ZREM', queue, me)
  redis.call('HDEL', seen, me)
  local waited = now - (tonumber(mine) - rank * 1e13)
  redis.call('HINCRBY', waits, rank .. ':ms', waited)
  if waited > tonumber(redis.call('HGET', waits, rank .. ':max') or '0') then
    redis.call('HSET', waits, rank .. ':max', waited)
  end
end
redis.call('PEXPIRE', waits, 3600000)
return {1, nreq + k, ntok + need, k}
""".replace("@LEASE_SHARE@", str(LEASE_SHARE))

#: Seconds a learned limit's shared marker lives (as the endpoint's state when idle).
LEARNED_SECONDS = 86400

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ids = itertools.count(1)
_PREFIX = f"{os.urandom(4).hex()}"


def duration_seconds(text: str) -> float | None:
    """OpenAI's reset durations (`6m0s`, `1s`, `20ms`, `1h2m3.5s`) or plain seconds; None when unreadable."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def call_id() -> str:
    """A name for one call's waiter and reservations, unique across processes and hosts."""
    return f"{_PREFIX}{os.getpid():x}.{next(_ids):x}"


def prompt_tokens(body: dict[str, Any] | None, raw: Any) -> int:
    """A call's prompt in tokens (about four bytes per token of its body); 0 without a JSON body."""
    if body is None:
        return 0
    size = len(raw) if isinstance(raw, (bytes, str)) else len(json_module.dumps(body, separators=(",", ":")))
    return size // 4


def tokens_needed(body: dict[str, Any] | None, raw: Any, default_max: int, *,
                  prompt: int | None = None) -> int:
    """A call's reservation in tokens: its prompt (`prompt_tokens`, or `prompt` when the caller
    counted it already) plus the most it may answer (`max_tokens`, `max_completion_tokens`, else
    `default_max`); 0 without a JSON body."""
    if body is None:
        return 0
    most = body.get("max_tokens") or body.get("max_completion_tokens") or default_max
    prompt = prompt_tokens(body, raw) if prompt is None else prompt
    return prompt + (most if isinstance(most, int) and most > 0 else default_max)


def usage_tokens(content: bytes) -> int | None:
    """The tokens an answer's `usage` says it cost (OpenAI's total, or Anthropic's input plus
    output); None when the body tells none."""
    if b'"usage"' not in content:
        return None
    try:
        usage = json_module.loads(content).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage_total(usage)


def usage_total(usage: Any) -> int | None:
    """The tokens a `usage` object counts (OpenAI's total, or Anthropic's input plus output)."""
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("input_tokens", "output_tokens")]
    return sum(p for p in parts if isinstance(p, int)) if any(isinstance(p, int) for p in parts) else None


@dataclass(frozen=True, slots=True)
class Grant:
    """One admission's answer: `admitted`, else `wait` (seconds until room is likely) and whether
    the caller waits `behind` others ranked before it; `requests` / `tokens` are the endpoint's running
    totals after this reservation (the mark a provider's headers are counted from)."""

    admitted: bool
    wait: float = 0.0
    behind: bool = False
    requests: int = 0
    tokens: int = 0
    lease: int = 1


@dataclass(slots=True)
class Lease:
    """Requests (and their tokens) one admission reserved beyond its own, for this process's
    next calls to the endpoint: members `<id>~2` .. `<id>~<size>` of the log, `tokens_left` of the
    tokens held under `<id>`, until `expires` (monotonic)."""

    id: str
    size: int
    next: int
    tokens_left: int
    requests: int  # the endpoint's running totals after the lease (Grant.requests / .tokens)
    tokens: int
    expires: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """What an admitted call holds: its id, tokens (of which `prompt` for its prompt) and the
    totals at its admission."""

    quota: Quota
    id: str
    tokens: int
    grant: Grant
    prompt: int = 0


class Quota:
    """One endpoint's room as this process sees it (see the module docstring). `active` while
    it has a limit, configured or announced by the provider; inactive quotas cost nothing."""

    def __init__(self, upstream: str, endpoint: str, *, rpm: int | None, tpm: int | None) -> None:
        self.upstream, self.endpoint = upstream, endpoint
        self.rpm, self.tpm = rpm or 0, tpm or 0
        base = f"quota:{upstream}:{endpoint}"
        self.keys = (f"{base}:log", f"{base}:tok", f"{base}:st", f"quota:{upstream}:queue",
                     f"quota:{upstream}:seen")
        self.learned_key = f"{base}:learned"
        self.learned = False
        self._made: dict[int, list[str]] = {}  # the keys as the cache client names them
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str, float, float, float]] = []
        self._lease: Lease | None = None

    @property
    def active(self) -> bool:
        return bool(self.rpm or self.tpm or self.learned)

    @property
    def counts_tokens(self) -> bool:
        return bool(self.tpm or self.learned)

    # -- admission -----------------------------------------------------------------------------
    def admit(self, *, tokens: int, waiter: str, reservation: str, rank: int, window: float,
              slices: int = 1, lease: int = 0, lease_seconds: float = 0.0) -> Grant:
        """Reserve one request and `tokens` now, or say how long to wait (see the module docstring).
        `slices` > 1 also holds each `window / slices` to `ceil(rpm / slices)` requests. `lease` > 1
        asks for up to that many requests at once (each with `tokens`) while the endpoint is far from
        its limits: the rest are this process's for `lease_seconds` (`leased`)."""
        with self._lock:
            self._lease_return()
            pending, self._pending = self._pending, []
        args = [int(window * 1000), self.rpm, self.tpm, tokens, reservation, waiter, rank,
                int(STALE_WAITER * 1000), len(pending)]
        for update in pending:
            args.extend(update)
        args.extend((EXPIRE_BATCH, max(1, slices), 0, lease if lease_seconds > 0 else 0))
        answer = self._script_run(args)
        admitted, first, second = (int(part) for part in answer[:3])
        if not admitted:
            return Grant(False, wait=first / 1000, behind=bool(second))
        size = int(answer[3]) if len(answer) > 3 else 1
        if size > 1:
            with self._lock:
                self._lease_return()
                self._lease = Lease(reservation, size, 2, tokens * (size - 1), first, second,
                                    time.monotonic() + lease_seconds)
            first, second = first - size + 1, second - tokens * (size - 1)
        return Grant(True, requests=first, tokens=second, lease=size)

    def leased(self, tokens: int) -> tuple[str, Grant] | None:
        """One request and `tokens` from this process's lease, without a round trip: (the
        reservation's id, its grant), or None when no lease holds room for it (one that is spent,
        past its time or too small is given back at the next admission)."""
        with self._lock:
            lease = self._lease
            if lease is None:
                return None
            if lease.next > lease.size or tokens > lease.tokens_left or time.monotonic() >= lease.expires:
                self._lease_return()
                return None
            lease.tokens_left -= tokens
            requests = lease.requests - lease.size + lease.next
            lease.next += 1
            return lease.id, Grant(True, requests=requests, tokens=lease.tokens - lease.tokens_left)

    def _lease_return(self) -> None:
        """Give the lease's unused requests and tokens back with the next admission (under the lock)."""
        lease, self._lease = self._lease, None
        if lease is not None and (lease.next <= lease.size or lease.tokens_left > 0):
            self._pending.append(("ret", lease.id, lease.next, lease.size, lease.tokens_left))

    def _script_run(self, args: list[Any]) -> Any:
        store = default_cache()
        engine = getattr(store, "engine", None)
        answer: Any = NOT_SERVED
        if engine is not None:
            answer = engine.on_redis(lambda redis: self._run(redis, args))
        if answer is NOT_SERVED:
            answer = local_store(self.keys, self.upstream).admit(args)
        return answer

    def publish(self) -> None:
        """Share what this process learned first: its pending corrections written to the endpoint's
        state now (the script, corrections only: nothing admitted) and the learned marker set, so
        every worker admits its calls against them (see the module docstring). Once per process
        and endpoint, after the answer that taught it."""
        with self._lock:
            pending, self._pending = self._pending, []
        args: list[Any] = [0, 0, 0, 0, "", "", 0, 0, len(pending)]
        for update in pending:
            args.extend(update)
        args.extend((EXPIRE_BATCH, 1, 1, 0))
        self._script_run(args)
        default_cache().set(self.learned_key, 1, timeout=LEARNED_SECONDS)

    def _run(self, redis: Any, args: list[Any]) -> Any:
        client = redis.client.get_client(write=True)
        made = self._made.get(id(client))
        if made is None:
            made = self._made[id(client)] = [str(redis.client.make_key(key)) for key in self.keys]
        waits = str(redis.client.make_key(waits_key(self.upstream, int(time.time() // 60))))
        return _script(client)(keys=[*made, waits], args=args, client=client)

    def leave(self, waiter: str) -> None:
        """Take `waiter` out of the queue (it gave up at its deadline)."""
        store = default_cache()
        engine = getattr(store, "engine", None)

        def on_redis(redis: Any) -> None:
            client = redis.client.get_client(write=True)
            pipe = client.pipeline(transaction=False)
            pipe.zrem(str(redis.client.make_key(self.keys[3])), waiter)
            pipe.hdel(str(redis.client.make_key(self.keys[4])), waiter)
            pipe.execute()

        if engine is None or engine.on_redis(on_redis) is NOT_SERVED:
            local_store(self.keys, self.upstream).leave(waiter)

    # -- what answers teach ----------------------------------------------------------------------
    def settle(self, held: Reservation | None, *, headers: Any, content: bytes | None) -> None:
        """Learn from an answer: the provider's limits and what is left (from `headers`), and the
        tokens the call really cost (from `content`'s usage), applied at the next admission."""
        updates: list[tuple[str, str, float, float, float]] = []
        for kind, suffix in (("req", "requests"), ("tok", "tokens")):
            remaining = headers.get(f"x-ratelimit-remaining-{suffix}")
            limit = headers.get(f"x-ratelimit-limit-{suffix}")
            if remaining is None and limit is None:
                continue
            reset = duration_seconds(headers.get(f"x-ratelimit-reset-{suffix}") or "") or 0.0
            # Counted from this call's admission on; an answer to a call made before the quota
            # was active counts from now.
            mark = str(held.grant.requests if kind == "req" else held.grant.tokens) if held else "now"
            left = _number(remaining)
            if left is None:
                left, reset = 10**12, 0.0
            updates.append((kind, mark, left, int(reset * 1000), _number(limit) or 0))
        first = bool(updates) and not self.learned
        if updates:
            self.learned = True
            self._lease_check(updates)
        if held is not None and held.tokens and content is not None:
            used = usage_tokens(content)
            if used is not None and used != held.tokens:
                updates.append(("used", held.id, used - held.tokens, 0, 0))
        if updates:
            with self._lock:
                self._pending.extend(updates)
        if first:
            self.publish()

    def _lease_check(self, announced: list[tuple[str, str, float, float, float]]) -> None:
        """Give the lease back when the provider says less is left than it would take to spend it
        LEASE_SHARE times over (the script's share: leases are for endpoints far from their limits)."""
        with self._lock:
            lease = self._lease
            if lease is None:
                return
            unused = {"req": lease.size - lease.next + 1, "tok": lease.tokens_left}
            if any(left < LEASE_SHARE * unused[kind] for kind, _, left, _, _ in announced):
                self._lease_return()

    def used(self, held: Reservation, tokens: int) -> None:
        """The call really cost `tokens` (a stream's final usage), applied at the next admission."""
        if tokens != held.tokens:
            with self._lock:
                self._pending.append(("used", held.id, tokens - held.tokens, 0, 0))

    def refused(self, held: Reservation | None, retry_after: float | None) -> None:
        """The provider answered 429: nothing is left until `retry_after` (else a second)."""
        mark = str(held.grant.requests) if held else "now"
        with self._lock:
            self._lease_return()
            self._pending.append(("req", mark, 0, int((retry_after or 1.0) * 1000), 0))
        self.learned = True


def learned_apply(quotas: dict[str, Quota], found: dict[str, Any]) -> None:
    """Mark learned the `quotas` (by their `learned_key`) whose shared marker is in `found` (a
    `get_many` of those keys, with whatever else its reader reads)."""
    for key, quota in quotas.items():
        if not quota.learned and found.get(key):
            quota.learned = True


def learned_read(quotas: dict[str, Quota]) -> None:
    """Read the shared markers of `quotas` (by their `learned_key`): one `get_many`."""
    if quotas:
        learned_apply(quotas, default_cache().get_many(list(quotas)))


def waits_key(upstream: str, minute: int) -> str:
    """The hash of one minute's admissions and waits by priority rank (`<rank>:n`, `:ms`, `:max`)."""
    return f"quota:{upstream}:waits:{minute}"


def admission_state(upstream: str, *, minutes: int = 5) -> dict[str, Any]:
    """What the upstream's admission looks like now, for displays: the callers waiting for room by
    priority, and over the last `minutes` the calls admitted to limited endpoints, their mean and
    longest wait by priority. Shared while Redis serves; else this process's."""
    queue = f"quota:{upstream}:queue"
    now = int(time.time() // 60)
    buckets = [waits_key(upstream, now - i) for i in range(minutes)]
    store = default_cache()
    engine = getattr(store, "engine", None)

    def on_redis(redis: Any) -> Any:
        client = redis.client.get_client(write=False)
        pipe = client.pipeline(transaction=False)
        for rank in range(len(PRIORITIES)):
            pipe.zcount(str(redis.client.make_key(queue)), rank * 1e13, f"({(rank + 1) * 1e13}")
        for key in buckets:
            pipe.hgetall(str(redis.client.make_key(key)))
        return pipe.execute()

    read = engine.on_redis(on_redis) if engine is not None else NOT_SERVED
    if read is NOT_SERVED:
        state = _local.get(queue) or _LocalState()
        waiting = [sum(1 for score, _ in state.queue if rank * 1e13 <= score < (rank + 1) * 1e13)
                   for rank in range(len(PRIORITIES))]
        read = [*waiting, *[state.waits.get(key, {}) for key in buckets]]
    totals: dict[str, float] = {}
    for fields in read[len(PRIORITIES):]:
        for field, value in fields.items():
            name = field.decode() if isinstance(field, bytes) else field
            if name.endswith(":max"):
                totals[name] = max(totals.get(name, 0.0), float(value))
            else:
                totals[name] = totals.get(name, 0.0) + float(value)
    out: dict[str, Any] = {"window_minutes": minutes, "priorities": {}}
    for rank, priority in enumerate(PRIORITIES):
        admitted = int(totals.get(f"{rank}:n", 0))
        out["priorities"][priority] = {
            "waiting": int(read[rank]), "admitted": admitted,
            "mean_wait_s": round(totals.get(f"{rank}:ms", 0.0) / admitted / 1000, 3) if admitted else 0.0,
            "max_wait_s": round(totals.get(f"{rank}:max", 0.0) / 1000, 3)}
    return out


def _number(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


_scripts: dict[int, Any] = {}


def _script(client: Any) -> Any:
    """The admission script registered on `client` (redis-py keeps its SHA and reloads it when Redis
    forgot it)."""
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(ADMIT_LUA)
    return script


# -- without Redis: the same logic in process memory ---------------------------------------------
class _LocalState:
    """One upstream's quota state in this process (the Lua script's keys as Python values)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logs: dict[str, deque[tuple[int, str]]] = {}
        self.tok: dict[str, dict[str, int]] = {}
        self.st: dict[str, dict[str, float]] = {}
        self.queue: list[tuple[float, str]] = []
        self.seen: dict[str, int] = {}
        self.waits: dict[str, dict[str, float]] = {}  # waits_key -> its fields, as on Redis


_local: dict[str, _LocalState] = {}
_local_lock = threading.Lock()


class _LocalQuota:
    def __init__(self, state: _LocalState, endpoint_key: str, upstream: str) -> None:
        self.state, self.key, self.upstream = state, endpoint_key, upstream

    def leave(self, waiter: str) -> None:
        with self.state.lock:
            self.state.queue = [entry for entry in self.state.queue if entry[1] != waiter]
            self.state.seen.pop(waiter, None)

    def admit(self, args: list[Any]) -> tuple[int, int, int]:
        with self.state.lock:
            return self._admit(args)

    def _admit(self, args: list[Any]) -> tuple[int, int, int]:
        state, now = self.state, int(time.time() * 1000)
        window, rpm, tpm, need, res, me, rank, stale, count_updates = args[:9]
        log = state.logs.setdefault(self.key, deque())
        tok = state.tok.setdefault(self.key, {})
        st = state.st.setdefault(self.key, {})
        self._apply(args[9:9 + 5 * count_updates], tok, st, now)
        if args[11 + 5 * count_updates] == 1:  # corrections only (Quota.publish)
            return 2, 0, 0
        while log and log[0][0] <= now - window:
            st["tokens"] = st.get("tokens", 0) - tok.pop(log.popleft()[1], 0)
        if not log:
            st["tokens"] = 0
        while state.queue and state.seen.get(state.queue[0][1], 0) < now - stale:
            state.seen.pop(state.queue.pop(0)[1], None)
        mine = next((score for score, name in state.queue if name == me), None)
        score = mine if mine is not None else rank * 1e13 + now
        ahead = sum(1 for s, name in state.queue if s < score and name != me)
        rpm = min(x for x in (rpm, st.get("lreq", 0)) if x) if (rpm or st.get("lreq")) else 0
        tpm = min(x for x in (tpm, st.get("ltok", 0)) if x) if (tpm or st.get("ltok")) else 0
        wait = 0.0
        if rpm and len(log) + ahead >= rpm:
            nth = min(len(log) - 1, len(log) - int(rpm) + ahead)
            if nth >= 0:
                wait = max(wait, log[nth][0] + window - now)
        slices = args[10 + 5 * count_updates]
        if rpm and slices > 1:
            slice_ms, per = window / slices, math.ceil(rpm / slices)
            recent = [entry for entry in log if entry[0] > now - slice_ms]
            if len(recent) >= per:
                wait = max(wait, recent[0][0] + slice_ms - now)
            if ahead:
                wait = max(wait, slice_ms * ahead // per)
        tokens = st.get("tokens", 0)
        if tpm and tokens > 0 and tokens + need > tpm and log:
            wait = max(wait, log[0][0] + window - now)
        if st.get("ureq", 0) > now and st.get("nreq", 0) - st.get("creq", 0) >= st.get("rreq", 0):
            wait = max(wait, st["ureq"] - now)
        spent = st.get("ntok", 0) - st.get("ctok", 0)
        if st.get("utok", 0) > now and need > 0 and spent + need > st.get("rtok", 0):
            wait = max(wait, st["utok"] - now)
        if ahead or wait > 0:
            if mine is None:
                bisect.insort(state.queue, (score, me))
            state.seen[me] = now
            return 0, int(max(wait if wait > 0 else 5, 1)), int(bool(ahead))
        log.append((now, res))
        if need > 0:
            tok[res] = need
            st["tokens"] = tokens + need
            st["ntok"] = st.get("ntok", 0) + need
        st["nreq"] = st.get("nreq", 0) + 1
        self._count(rank, None if mine is None else now - (mine - rank * 1e13))
        if mine is not None:
            self.leave_locked(me)
        return 1, int(st["nreq"]), int(st.get("ntok", 0))

    def _count(self, rank: int, waited: float | None) -> None:
        """One admission (and its wait, when it waited) in this minute's counts, an hour kept."""
        state, minute = self.state, int(time.time() // 60)
        for old in [k for k in state.waits if int(k.rsplit(":", 1)[1]) < minute - 60]:
            del state.waits[old]
        waits = state.waits.setdefault(waits_key(self.upstream, minute), {})
        waits[f"{rank}:n"] = waits.get(f"{rank}:n", 0) + 1
        if waited is not None:
            waits[f"{rank}:ms"] = waits.get(f"{rank}:ms", 0) + waited
            waits[f"{rank}:max"] = max(waits.get(f"{rank}:max", 0), waited)

    def leave_locked(self, waiter: str) -> None:
        self.state.queue = [entry for entry in self.state.queue if entry[1] != waiter]
        self.state.seen.pop(waiter, None)

    @staticmethod
    def _apply(updates: list[Any], tok: dict[str, int], st: dict[str, float], now: int) -> None:
        for i in range(0, len(updates), 5):
            kind, name, a, b, c = updates[i:i + 5]
            if kind == "used":
                if name in tok:
                    st["tokens"] = st.get("tokens", 0) + a
                    tok[name] += a
                continue
            if kind == "ret":  # no lease is taken in process memory
                continue
            at = st.get("n" + kind, 0) if name == "now" else float(name)
            if at >= st.get("c" + kind, -1) or st.get("u" + kind, 0) <= now:
                st["r" + kind], st["c" + kind], st["u" + kind] = a, at, now + b
            if c:
                st["l" + kind] = c


def local_store(keys: tuple[str, ...], upstream: str) -> _LocalQuota:
    """The process-memory quota for an endpoint's `keys` (its upstream's queue shared)."""
    with _local_lock:
        state = _local.get(keys[3])
        if state is None:
            state = _local[keys[3]] = _LocalState()
    return _LocalQuota(state, keys[0], upstream)


def local_reset() -> None:
    """Forget every process-memory quota (tests)."""
    with _local_lock:
        _local.clear()
