"""Invariant 4: reads and writes of a register are linearizable, checked per key.

The algorithm is Wing & Gong's with Lowe's memoization, as Porcupine implements it: the
history is a doubly linked list of call and return entries in real-time order; the search
walks it, linearizing any call it meets whose effect the model allows (lifting the call and
its return out of the list and pushing it on a stack), and backtracks when it meets the
return of an op it has not linearized. A cache of (set of linearized ops as a bitset, model
state) prunes configurations already explored. An op with an unknown outcome (info, or never
completed) has its return at +infinity: it has no return entry, may be linearized at any
point after its invoke, and need not be linearized at all (the search succeeds once every
op that returned is linearized).

Crashed (info) ops are what make such searches blow up: each stays pending to the end, and
the search would try every subset of them at every point. Three sound reductions keep it
near linear on Coda's histories (see _Versions and _twin_classes): an info write/cas may
only make a version no op that returned claims (and none beyond the highest version
reported); an info write whose value a read saw must have made the version that read saw;
and crashed writes no read saw are interchangeable, so only the first pending one is tried.
In the plain register, a crashed write no read saw is simply left out. A brute-force
oracle in tests/unit/test_jepsen_checkers.py holds the checker to the plain definition.

Real time is the history's order: A precedes B iff A's completion index < B's invoke index.

Ops (client ops, paired; key = register name; f in read / write / cas):

  model "cas-register" (default), a versioned register, state (value, version), initially
  (None, 0); every applied write or cas makes version + 1 (Coda's broadcast variables):
    write  invoke value: v.              ok value: {"version": n} (optional; checked if given)
    read   ok value: {"value": v, "version": n} ("version" optional); {"value": None, ...}
           (or a bare None) when the key is absent.
    cas    invoke value: {"expect_version": n, "new": v}. ok: applied (ok value may carry
           {"version": n + 1}); fail: the version did not match, nothing changed.
  model "register", a plain register, state v, initially None:
    write  invoke value: v.              read  ok value: v, or {"value": v}.

fail ops are dropped (they did not happen); reads that are info are dropped (they constrain
nothing). Values are compared as JSON.

Bounds (never a false pass): a key with more than max_ops_per_key ops (default 2000), or
whose search runs past time_budget_s (default 10 s), is "unknown".

Result: valid iff every key is linearizable. For each key that is not, an anomaly
"nonlinearizable" names the op that could not be linearized ("op", with its record
indexes in "ops") after the longest linearizable prefix the search found ("prefix": the
invoke indexes of those ops, in linearization order) and the model state it reached.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict

from jepsen.checkers._common import Findings, client_ops, value_field
from jepsen.history import Op

READ, WRITE, CAS = "read", "write", "cas"
ILLEGAL = object()   # a model step's answer when the op cannot happen in that state
UNSEEN = object()    # the value of a write no read ever returned: no read can match it


def _freeze(value):
    """A hashable stand-in for a JSON value (states go into the memo cache)."""
    if isinstance(value, (dict, list)):
        return ("json", json.dumps(value, sort_keys=True))
    return value


# --- models ---------------------------------------------------------------------------------
# A model op is a tuple (kind, a, b, version_answered, free_versions); step(state, op) -> the
# new state or ILLEGAL. free_versions (info ops only, else None): (claimed, limit), see
# _Versions.

def _step_versioned(state, op):
    kind, a, b, answered, free = op
    value, version = state
    if kind is READ:  # a: value read, b: version read (None: not reported)
        return state if a == value and (b is None or b == version) else ILLEGAL
    if answered is not None and answered != version + 1:
        return ILLEGAL
    if free is not None and (version + 1 in free[0] or version + 1 > free[1]):
        return ILLEGAL
    if kind is WRITE:  # a: new value
        return (a, version + 1)
    return (b, version + 1) if a == version else ILLEGAL  # cas: a expected version, b new


def _step_plain(state, op):
    kind, a = op[0], op[1]
    if kind is READ:
        return state if a == state else ILLEGAL
    return a


MODELS = {"cas-register": (_step_versioned, (None, 0)), "register": (_step_plain, None)}


def _read_answer(result, versioned: bool) -> tuple:
    if isinstance(result, dict) and "value" in result:
        return _freeze(result["value"]), result.get("version") if versioned else None
    return _freeze(result), None


class _Versions:
    """What the ops that returned say about versions, to prune where an info op can take
    effect (without this, every pending info op is tried at every point, and their subsets
    blow the search up). Sound because each version is made by exactly one op:
    - a version an ok write/cas answered (claimed) was made by that op, not an info one;
    - when every ok op reports its version, none beyond the highest reported (limit) is
      ever needed: a later op that returned would have seen it;
    - an info write whose (unique) value a read saw made the version that read saw."""

    def __init__(self, operations: list[Op]):
        self.claimed: set = set()
        self.read_at: dict = defaultdict(set)  # frozen value -> versions reads saw it at
        self.written: dict = defaultdict(int)  # frozen value -> how many ops write it
        pinned, highest = True, 0
        for op in operations:
            if op.type == "ok" and op.f == READ:
                value, version = _read_answer(op.result, True)
                self.read_at[value].add(version)
                pinned &= version is not None
                highest = max(highest, version or 0)
            elif op.f in (WRITE, CAS) and op.type != "fail":
                self.written[_written_value(op)] += 1
                answered = value_field(op.result, "version")
                if op.type == "ok":
                    pinned &= answered is not None
                    if answered is not None:
                        self.claimed.add(answered)
                        highest = max(highest, answered)
        self.free = (frozenset(self.claimed), highest if pinned else float("inf"))

    def made_by(self, value) -> int | None:
        """The version an info write of `value` must have made, if reads pin it."""
        versions = self.read_at.get(value, ())
        if self.written[value] == 1 and len(versions) == 1:
            return next(iter(versions))
        return None


def _written_value(op: Op):
    return _freeze(op.argument if op.f == WRITE else value_field(op.argument, "new"))


def _model_op(op: Op, versioned: bool, seen: set, versions: _Versions | None):
    """The model tuple for op, or None when it constrains nothing (dropped)."""
    if op.type == "fail" or (op.f == READ and op.type != "ok"):
        return None
    if op.f == READ:
        value, version = _read_answer(op.result, versioned)
        return (READ, value, version, None, None)
    new = _written_value(op)
    shown = new if new in seen else UNSEEN
    if not versioned:
        # An info write no read saw can be left out: any linearization with it stays one
        # without it (nothing read its value), so it only widens the search.
        return None if shown is UNSEEN and op.type != "ok" else (WRITE, shown, None, None, None)
    answered, free = value_field(op.result, "version"), None
    if op.type != "ok":
        answered = versions.made_by(new) if shown is not UNSEEN else None
        free = versions.free if answered is None else None
    if op.f == WRITE:
        return (WRITE, shown, None, answered, free)
    return (CAS, value_field(op.argument, "expect_version"), shown, answered, free)


# --- the linked list of call / return entries -----------------------------------------------

class _Entry:
    __slots__ = ("call", "op", "op_id", "bit", "finite", "twins", "match", "prev", "next")

    def __init__(self, call: bool, op, op_id: int, finite: bool, twins=None):
        self.call, self.op, self.op_id, self.finite = call, op, op_id, finite
        self.bit = 1 << op_id if op_id >= 0 else 0
        self.twins = twins  # see _twin_classes
        self.match = self.prev = self.next = None


def _twin_classes(calls: list[tuple]) -> dict:
    """Interchangeable ops: info writes (or cas with one expected version) no read saw and
    nothing pins. Two such twins, both invoked by now, have no return and can each take
    effect at any later point, with the same effect: linearizing either leads to the same
    futures. So the search only tries the first pending twin of a class that it meets,
    which keeps it from enumerating every subset of crashed writes. -> {op id: class}."""
    classes: dict = {}
    twins: dict = {}
    for _invoke_at, complete_at, model_op, op_id in calls:
        if complete_at == float("inf") and model_op[0] is not READ and model_op[3] is None \
                and UNSEEN in model_op[1:3]:
            twins[op_id] = classes.setdefault(model_op, len(classes))
    return twins


def _entries(calls: list[tuple]) -> _Entry:
    """The list (a head sentinel) from (invoke index, complete index | inf, model op, id):
    calls and returns in history order. Unknown outcomes get no return entry."""
    events = []
    twins = _twin_classes(calls)
    for invoke_at, complete_at, model_op, op_id in calls:
        finite = complete_at != float("inf")
        call = _Entry(True, model_op, op_id, finite, twins.get(op_id))
        events.append((invoke_at, call))
        if finite:
            ret = _Entry(False, model_op, op_id, True)
            ret.match, call.match = call, ret
            events.append((complete_at, ret))
    events.sort(key=lambda pair: pair[0])
    head = prev = _Entry(False, None, -1, False)
    for _at, entry in events:
        prev.next, entry.prev = entry, prev
        prev = entry
    return head


def _lift(call: _Entry) -> None:
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    if ret is not None:
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    ret = call.match
    if ret is not None:
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


# --- the search -------------------------------------------------------------------------------

class _Best:
    """The deepest point the search reached: the longest linearizable prefix found."""

    def __init__(self):
        self.depth, self.prefix, self.blocked_by, self.state = -1, [], None, None

    def note(self, stack: list, blocked: _Entry, state) -> None:
        if len(stack) > self.depth:
            self.depth = len(stack)
            self.prefix = [frame[0].op_id for frame in stack]
            self.blocked_by = blocked.op_id
            self.state = state


_NONE: frozenset = frozenset()


def search(calls: list[tuple], step, init, deadline_s: float):
    """(True | False | "unknown", _Best, configurations explored). calls: as for
    _entries; op ids 0..n-1."""
    head = _entries(calls)
    remaining = sum(1 for c in calls if c[1] != float("inf"))  # ops that must linearize
    cache: set = set()
    stack: list = []
    best = _Best()
    state, linearized, entry, steps = init, 0, head.next, 0
    passed = _NONE  # twin classes met earlier in this scan of the list
    while remaining:
        steps += 1
        if not steps & 0x3FF and time.monotonic() > deadline_s:
            return "unknown", best, len(cache)
        if entry.call:
            twins = entry.twins
            if twins is None or twins not in passed:
                new_state = step(state, entry.op)
                if new_state is not ILLEGAL:
                    config = (linearized | entry.bit, new_state)
                    if config not in cache:
                        cache.add(config)
                        stack.append((entry, state, passed))
                        state, linearized, passed = new_state, config[0], _NONE
                        remaining -= entry.finite
                        _lift(entry)
                        entry = head.next
                        continue
                if twins is not None:
                    passed = passed | {twins}
            entry = entry.next
        else:  # the return of an op not linearized yet: undo the last choice
            best.note(stack, entry, state)
            if not stack:
                return False, best, len(cache)
            entry, state, passed = stack.pop()
            if entry.twins is not None:
                passed = passed | {entry.twins}
            linearized ^= entry.bit
            remaining += entry.finite
            _unlift(entry)
            entry = entry.next
    return True, best, len(cache)


# --- per key, and the whole check ---------------------------------------------------------------

def check_key(operations: list[Op], *, model: str = "cas-register",
              time_budget_s: float = 10.0) -> dict:
    """One key's verdict: {"valid", "ops", "explored", "elapsed_s"[, the failure]}."""
    step, init = MODELS[model]
    versioned = model == "cas-register"
    seen = {_read_answer(op.result, versioned)[0] for op in operations
            if op.f == READ and op.type == "ok"}
    versions = _Versions(operations) if versioned else None
    kept = [(op, m) for op in operations
            if (m := _model_op(op, versioned, seen, versions)) is not None]
    calls = [(op.invoke_index, op.complete_index, m, i) for i, (op, m) in enumerate(kept)]
    started = time.monotonic()
    valid, best, explored = search(calls, step, init, started + time_budget_s)
    out = {"valid": valid, "ops": len(kept), "explored": explored,
           "elapsed_s": round(time.monotonic() - started, 4)}
    if valid is False:
        blocked = kept[best.blocked_by][0]
        out.update(op=_describe(blocked), ops_named=blocked.indexes,
                   prefix=[kept[i][0].invoke_index for i in best.prefix],
                   state=_replay([kept[i][0] for i in best.prefix], versioned))
    return out


def _describe(op: Op) -> dict:
    return {"index": op.invoke_index, "process": op.process, "f": op.f, "type": op.type,
            "argument": op.argument, "result": op.result}


def _replay(prefix: list[Op], versioned: bool):
    """The model state after the prefix, with the real values (the search's own states
    stand in UNSEEN for values no read returned)."""
    value, version = None, 0
    for op in prefix:
        if op.f == WRITE:
            value, version = op.argument, version + 1
        elif op.f == CAS:
            value, version = value_field(op.argument, "new"), version + 1
    return {"value": value, "version": version} if versioned else value


def check(ops: list[dict], *, model: str = "cas-register", max_ops_per_key: int = 2000,
          time_budget_s: float = 10.0, workload: str | None = None,
          max_anomalies: int = 20, **_ignored) -> dict:
    if model not in MODELS:
        raise ValueError(f"model {model!r}: one of {sorted(MODELS)}")
    per_key: dict = defaultdict(list)
    for op in client_ops(ops, (READ, WRITE, CAS), workload):
        per_key[op.key].append(op)
    findings = Findings(max_anomalies)
    keys: dict = {}
    for key, operations in per_key.items():
        if len(operations) > max_ops_per_key:
            keys[key] = {"valid": "unknown", "ops": len(operations)}
            findings.unsure("too-many-ops", [], key=key, ops_count=len(operations),
                            max_ops_per_key=max_ops_per_key)
            continue
        keys[key] = verdict = check_key(operations, model=model, time_budget_s=time_budget_s)
        if verdict["valid"] == "unknown":
            findings.unsure("search-timed-out", [], key=key, ops_count=verdict["ops"],
                            time_budget_s=time_budget_s)
        elif verdict["valid"] is False:
            findings.add("nonlinearizable", verdict.pop("ops_named"), key=key,
                         op=verdict["op"], prefix_length=len(verdict["prefix"]),
                         prefix=verdict["prefix"], state=verdict["state"])
    return findings.result(model=model, keys_checked=len(keys),
                           ops=sum(len(v) for v in per_key.values()),
                           keys={str(k): {n: v for n, v in verdict.items()
                                          if n not in ("prefix", "op", "state")}
                                 for k, verdict in keys.items()})
