"""
Requests whose keys live on several backends of a sharded cluster (redis
C{MGET}, C{DEL}, memcached C{get k1 k2}...): cut into one part per backend
with the codec's C{split}, sent as requests of their own, and their replies
merged into the one reply the client expects (as Envoy's redis proxy keeps
this in its command splitter).
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

from poolproxy.codec import Frame, IShardedCodec

#: The answer for a request whose keys span backends and cannot be split.
CROSS_SHARD: Any = object()


class SplitGroup:
    """
    A request split across shards (L{ICodec.split}): its parts are sent as
    requests of their own, in consecutive slots, and their replies merged
    into the one reply the client gets.
    """

    __slots__ = ("parts", "merge")

    def __init__(self, parts: int, merge: Callable[[List[bytes]], bytes]) -> None:
        self.parts = parts
        self.merge = merge


def split_by_shard(codec: IShardedCodec, pick: Callable[[Optional[bytes]], Any],
                   frame: Frame) -> Any:
    """
    For a frame whose keys live on different backends (C{pick(key)} says
    where each lives): its parts, one per backend, and how to merge their
    replies (L{IShardedCodec.split}); or L{CROSS_SHARD} if the codec cannot
    split it.  L{None} when its keys (if any) live on one backend.
    """
    keys = codec.keys(frame)
    if not keys or len(keys) < 2:
        return None
    groups: "dict[Any, List[int]]" = {}
    for i, key in enumerate(keys):
        groups.setdefault(pick(key), []).append(i)
    if len(groups) == 1:
        return None
    parts = codec.split(frame, list(groups.values()))
    return CROSS_SHARD if parts is None else parts
