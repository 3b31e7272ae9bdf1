"""Replay a shard's recorded Raft journal into a fresh LMDB: the apply path's CPU per command.

With raft.replicate_write_sets off, every replica runs each committed command through
flow.applier -> flow.state_machine (apply CPU paid three times per command); on (the
default) the journal holds write sets, which replay as LMDB writes ("writes" below: the
per-entry cost every replica pays now). This reads a real journal (say, a node's
`shard-000/raft.journal` kept from a bench run with `--keep`), applies its entries in
batches of `--batch` per LMDB transaction (as a replica's tick does), and prints the CPU
per command by kind, optionally under cProfile.

    python bench/replay_apply.py DATA_DIR/n1/shard-000/raft.journal [--profile]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pickle
import pstats
import sys
import tempfile
import time

from pysyncobj import journal as pjournal

from coda.flow import commands
from coda.flow.applier import Applier
from coda.storage.env import ShardStore

REGULAR_COMMAND = 0  # pysyncobj's _COMMAND_TYPE.REGULAR: one byte, then the pickled call


def recorded_commands(journal_path: str) -> list[bytes]:
    """The Flow command bytes of every regular entry, in log order."""
    with tempfile.TemporaryDirectory() as scratch:
        # FileJournal may rewrite its file on open: read a copy.
        copy = os.path.join(scratch, "journal")
        with open(journal_path, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
        journal = pjournal.FileJournal(copy)
        out = []
        for i in range(len(journal)):
            command = journal[i][0]
            if not command or command[0] != REGULAR_COMMAND:
                continue
            args = pickle.loads(command[1:])[1]  # (func id, args[, kwargs])
            if args and isinstance(args[0], bytes):
                # a batch entry (flow.replica) replays as its commands, one by one
                out.extend(commands.split_batch(args[0]) or [args[0]])
        journal._destroy()
    return out


def replay(datas: list[bytes], batch: int) -> dict:
    by_kind_s: dict[str, float] = collections.defaultdict(float)
    by_kind_n: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="coda-replay-") as root:
        store = ShardStore(os.path.join(root, "lmdb"))
        applier = Applier(store)
        began = time.process_time()
        for index, data in enumerate(datas, start=1):
            # A write-set entry (flow.speculation: what a leader's run of its commands
            # wrote) replays as its writes: what every replica pays per entry now.
            kind = commands.WRITES if commands.split_writes(data) is not None \
                else commands.decode(data).kind
            t = time.process_time()
            applier.apply(index, data)
            by_kind_s[kind] += time.process_time() - t
            by_kind_n[kind] += 1
            if index % batch == 0:
                applier.commit()
        applier.commit()
        total_s = time.process_time() - began
        store.close()
    return {"commands": len(datas), "cpu_s": round(total_s, 3),
            "us_per_command": round(1e6 * total_s / max(1, len(datas)), 1),
            "by_kind": {k: {"n": by_kind_n[k], "us_each": round(1e6 * by_kind_s[k] / by_kind_n[k], 1)}
                        for k in sorted(by_kind_n, key=lambda k: -by_kind_s[k])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("journal")
    parser.add_argument("--batch", type=int, default=8, help="commands per LMDB transaction")
    parser.add_argument("--profile", action="store_true", help="cProfile the replay")
    args = parser.parse_args()
    datas = recorded_commands(args.journal)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        result = replay(datas, args.batch)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    else:
        result = replay(datas, args.batch)
    print(result)


if __name__ == "__main__":
    main()
