"""Nemeses: the faults a run injects, seeded and bounded, each with its way back.

A nemesis has `start(env, rng) -> dict` (what it did, for the log) and `stop(env) -> dict`
(heal: reconnect, restart, resume, reset the clock). The schedule (`windows`) alternates
quiet and fault windows of seeded random lengths inside the run's time, and always ends
healed, so the final reads see a whole cluster. `mix` picks a different nemesis per window.

Faults (shared/notes/faults.md says what works on this machine):
- partitions (netns hosts only): isolate one node, the leader of a shard, halves, a
  bridge (one node sees both sides), a majorities ring (one-way drops: every node sees a
  majority, no two the same one);
- kill -9 of one node, a majority, all; restarted on the same data at the heal;
- SIGSTOP of the leader of a shard or of one node; SIGCONT at the heal;
- clock: bumps (one node's wall clock +/- 30..300 s) and strobes (jumping back and
  forth every 0.2 s) through libfaketime's live timestamp file;
- lost unsynced writes: the node's data directory sits on LazyFS; a power cut kills the
  node, drops every byte it never fsynced, remounts and restarts it (one node, or all).
"""

from __future__ import annotations

import random
import signal
import threading
import time

PARTITIONS = ("partition-one", "partition-leader", "partition-halves", "partition-bridge",
              "partition-ring")
PROCESS = ("kill-one", "kill-majority", "kill-all", "pause-one", "pause-leader")
CLOCK = ("clock-bump", "clock-strobe")
DISK = ("lose-unsynced-one", "lose-unsynced-all")
ALL = PARTITIONS + PROCESS + CLOCK + DISK + ("mix", "none")


def needs(name: str) -> set[str]:
    """What a nemesis needs of the hosts: netns, faketime, lazyfs."""
    if name in PARTITIONS:
        return {"netns"}
    if name in CLOCK:
        return {"faketime"}
    if name in DISK:
        return {"lazyfs"}
    if name == "mix":
        return set()  # mix draws only from what the hosts can do
    return set()


# --- partitions -----------------------------------------------------------------------------

def _drop(env, me: int, peer: int) -> None:
    """Node `me` stops hearing node `peer` (one direction)."""
    env.net_run(me, ["iptables", "-w", "-A", "INPUT", "-s", env.net.node_ip[peer], "-j", "DROP"])


def partition_start(kind: str, env, rng: random.Random) -> dict:
    nodes = list(range(env.node_count))
    if kind == "partition-one":
        victim = rng.choice(nodes)
        env.net.isolate(victim)
        return {"isolated": victim}
    if kind == "partition-leader":
        shard = rng.randrange(env.shards)
        leader = env.leader_of(shard)
        victim = leader if leader is not None else rng.choice(nodes)
        env.net.isolate(victim)
        return {"isolated": victim, "shard": shard, "was_leader": leader is not None}
    if kind == "partition-halves":
        rng.shuffle(nodes)
        half = len(nodes) // 2
        small, big = nodes[:half], nodes[half:]
        for a in small:
            for b in big:
                env.net.cut(a, b)
        return {"sides": [sorted(small), sorted(big)]}
    if kind == "partition-bridge":
        rng.shuffle(nodes)
        bridge, a, b = nodes[0], nodes[1], nodes[2]
        env.net.cut(a, b)
        return {"bridge": bridge, "cut": [a, b]}
    if kind == "partition-ring":
        # Node i hears i+1 and itself, not i-1: each sees a majority of 3, none the same.
        order = nodes[:]
        rng.shuffle(order)
        dropped = []
        for pos, me in enumerate(order):
            peer = order[(pos - 1) % len(order)]
            _drop(env, me, peer)
            dropped.append([me, peer])
        return {"deaf_to": dropped}
    raise ValueError(kind)


def partition_stop(env) -> dict:
    env.net.heal()
    return {"healed": True}


# --- processes ------------------------------------------------------------------------------

def process_start(kind: str, env, rng: random.Random) -> dict:
    nodes = list(range(env.node_count))
    if kind.startswith("kill"):
        count = {"kill-one": 1, "kill-majority": len(nodes) // 2 + 1, "kill-all": len(nodes)}[kind]
        victims = sorted(rng.sample(nodes, count))
        for i in victims:
            env.kill(i, signal.SIGKILL)
        env.stopped = victims
        return {"killed": victims}
    if kind == "pause-leader":
        shard = rng.randrange(env.shards)
        leader = env.leader_of(shard)
        victim = leader if leader is not None else rng.choice(nodes)
    else:
        victim = rng.choice(nodes)
    env.kill(victim, signal.SIGSTOP)
    env.paused = [victim]
    return {"paused": victim}


def process_stop(env) -> dict:
    out = {}
    for i in getattr(env, "paused", []) or []:
        env.kill(i, signal.SIGCONT)
        out["resumed"] = i
    env.paused = []
    victims = getattr(env, "stopped", []) or []
    for i in victims:
        env.restart(i)
    if victims:
        out["restarted"] = victims
    env.stopped = []
    return out


# --- clocks ---------------------------------------------------------------------------------

class Strobe:
    """Jump one node's clock between two offsets every period_s until stopped."""

    def __init__(self, env, node: int, offsets_s: tuple[int, int], period_s: float):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(env, node, offsets_s, period_s),
                                        daemon=True)
        self._thread.start()

    def _run(self, env, node, offsets_s, period_s) -> None:
        flip = 0
        while not self._stop.wait(period_s):
            env.set_clock(node, offsets_s[flip])
            flip ^= 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def clock_start(kind: str, env, rng: random.Random) -> dict:
    node = rng.randrange(env.node_count)
    if kind == "clock-bump":
        offset_s = rng.choice((-1, 1)) * rng.randint(30, 300)
        env.set_clock(node, offset_s)
        return {"node": node, "offset_s": offset_s}
    offsets = (rng.randint(-120, -10), rng.randint(10, 120))
    env.strobe = Strobe(env, node, offsets, period_s=0.2)
    return {"node": node, "strobe_s": list(offsets), "period_s": 0.2}


def clock_stop(env) -> dict:
    strobe = getattr(env, "strobe", None)
    if strobe is not None:
        strobe.stop()
        env.strobe = None
    for i in range(env.node_count):
        env.set_clock(i, 0)
    return {"clocks": "reset"}


# --- lost unsynced writes -------------------------------------------------------------------

def disk_start(kind: str, env, rng: random.Random) -> dict:
    victims = [rng.randrange(env.node_count)] if kind == "lose-unsynced-one" \
        else list(range(env.node_count))
    dropped = {}
    for i in victims:  # all killed first: no survivor writes while others lose data
        env.kill(i, signal.SIGKILL)
    for i in victims:
        dropped[i] = env.power_cut(i)
    env.stopped = victims
    return {"power_cut": victims, "dropped_bytes": {str(i): d.get("dropped_bytes", 0)
                                                    for i, d in dropped.items()}}


# --- the registry and the schedule -----------------------------------------------------------

def start(kind: str, env, rng: random.Random) -> dict:
    if kind in PARTITIONS:
        return partition_start(kind, env, rng)
    if kind in PROCESS:
        return process_start(kind, env, rng)
    if kind in CLOCK:
        return clock_start(kind, env, rng)
    if kind in DISK:
        return disk_start(kind, env, rng)
    raise ValueError(f"unknown nemesis {kind!r}")


def stop(kind: str, env) -> dict:
    if kind in PARTITIONS:
        return partition_stop(env)
    if kind in CLOCK:
        return clock_stop(env)
    return process_stop(env)  # kills, pauses and power cuts all end in restarts/resumes


def windows(total_s: float, rng: random.Random, *, quiet_s=(2.0, 5.0), fault_s=(3.0, 10.0),
            tail_s: float = 5.0) -> list[tuple[float, float]]:
    """[(start_s, end_s)] fault windows within total_s, quiet gaps between, and a healed
    tail before the end (so the workload's last ops meet a whole cluster). Short runs
    scale the lengths down; any run of 6 s or more gets at least one window."""
    scale = min(1.0, total_s / 40.0)
    quiet_s = (quiet_s[0] * scale, quiet_s[1] * scale)
    fault_s = (fault_s[0] * scale, fault_s[1] * scale)
    tail_s *= scale
    out, t = [], rng.uniform(*quiet_s)
    while True:
        length = rng.uniform(*fault_s)
        if t + length > total_s - tail_s:
            break
        out.append((round(t, 3), round(t + length, 3)))
        t += length + rng.uniform(*quiet_s)
    if not out and total_s >= 6:
        out.append((round(total_s * 0.25, 3), round(total_s * 0.7, 3)))
    return out


def choose(name: str, available: set[str], rng: random.Random) -> str:
    """The nemesis of one window: `name`, or for mix one the hosts can do."""
    if name != "mix":
        return name
    kinds = [k for k in ALL if k not in ("mix", "none") and needs(k) <= available]
    return rng.choice(kinds)


class Schedule:
    """Runs the windows on a thread: start, wait, stop; logs each step through env.log."""

    def __init__(self, name: str, env, total_s: float, seed: int):
        self.name, self.env = name, env
        self.rng = random.Random(seed)
        self.plan = windows(total_s, self.rng) if name != "none" else []
        self.t0 = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="nemesis")
        self._halt = threading.Event()
        self.error: BaseException | None = None

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def _sleep_until(self, at_s: float) -> bool:
        return not self._halt.wait(max(0.0, self.t0 + at_s - time.monotonic()))

    def _run(self) -> None:
        try:
            for begin_s, end_s in self.plan:
                if not self._sleep_until(begin_s):
                    return
                kind = choose(self.name, self.env.available, self.rng)
                self.env.log("start", kind, start(kind, self.env, self.rng))
                self._sleep_until(end_s)
                self.env.log("stop", kind, stop(kind, self.env))
        except BaseException as exc:  # a nemesis that cannot act fails the run, loudly
            self.error = exc
            self.env.log("error", self.name, {"error": repr(exc)})

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout=timeout_s)

    def halt(self) -> None:
        self._halt.set()
