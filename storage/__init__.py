"""LMDB layout of a shard replica: key encoders, msgpack codecs, the environment shell.

`keys` and `codec` are pure (the shard state machine uses them); `env` owns LMDB.
"""
