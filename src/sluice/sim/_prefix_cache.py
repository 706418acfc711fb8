"""Automatic prefix caching: which free KV blocks still hold a known prefix, and which to give up first.

A full block of a sequence is named by a chained hash of its tokens, as vLLM names it (vllm/v1/core/kv_cache_utils.py,
``hash_block_tokens``: the parent block's hash and this block's token ids; ``Request.block_hashes`` grows as its
blocks fill): two sequences whose first ``k`` blocks hold the same tokens have the same first ``k`` hashes, whatever
follows. A sequence without token ids (``Sequence.token_ids is None``: tests, the health probe) gets hashes of its
own, which only it can match.

``PrefixCache`` holds the evictable pool, as vLLM's ``BlockPool`` keeps it (vllm/v1/core/block_pool.py): blocks no
running sequence holds but whose content is still valid, in eviction order, least recently freed first
(``free_blocks`` appends cached blocks to the free queue's tail, and a request's blocks are freed tail first,
``SingleTypeKVCacheManager.free``, so a prefix loses its end before its start); a block taken for new content
evicts the oldest (``get_new_blocks`` pops the queue's head; blocks that hold nothing are reused before any cached
one). Only these free blocks are matched: a block in use by a running sequence is not shared with a newcomer
(vLLM would share it; the simulator keeps the accounting simple, and the newcomer computes its own copy).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Protocol


class Hashed(Protocol):
    """What block hashing reads of a sequence (``sim._engine.Sequence``)."""

    @property
    def seq_id(self) -> int: ...

    @property
    def token_ids(self) -> Sequence[int] | None: ...

    @property
    def block_hashes(self) -> list[int]: ...

_ROOT_HASH = 0  # the parent of a sequence's first block (vLLM's NONE_HASH)
_OWN = -1  # marks the hashes of a sequence without token ids: (_OWN, seq_id, block index)


def block_hashes(seq: Hashed, count: int, block_size: int) -> list[int]:
    """The hashes of ``seq``'s first ``count`` full blocks, computed once (kept on the sequence).

    Python's ``hash`` of a tuple of ints is the same in every process (only str and bytes hashes are salted)."""
    hashes = seq.block_hashes
    ids = seq.token_ids
    while len(hashes) < count:
        i = len(hashes)
        if ids is None:
            hashes.append(hash((_OWN, seq.seq_id, i)))
        else:
            parent = hashes[-1] if hashes else _ROOT_HASH
            hashes.append(hash((parent, ids[i * block_size:(i + 1) * block_size])))
    return hashes[:count]


class PrefixCache:
    """The cached free blocks, by hash, oldest first."""

    def __init__(self) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._blocks

    def match(self, hashes: Iterable[int]) -> int:
        """How many of ``hashes``, from the first, are cached (the longest cached prefix, in blocks)."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            n += 1
        return n

    def take(self, hashes: Iterable[int]) -> None:
        """A sequence reuses these cached blocks: they leave the pool (they are no longer free)."""
        for h in hashes:
            del self._blocks[h]

    def put(self, hashes: list[int]) -> None:
        """Blocks freed with their content, in a sequence's order: its last block is evicted first. A block whose
        hash is already cached (two running sequences computed the same prefix) is freed as an empty block, and
        the cached copy counts as freshly used."""
        for h in reversed(hashes):
            if h in self._blocks:
                self._blocks.move_to_end(h)
            else:
                self._blocks[h] = None

    def evict(self, count: int) -> None:
        """Forget the ``count`` least recently freed blocks (their room is needed)."""
        for _ in range(count):
            self._blocks.popitem(last=False)
