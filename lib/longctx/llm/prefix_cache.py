"""How much of a run's prompt tokens a serving engine's prefix cache can reuse, measured on the
real prompts in the order they are sent.

vLLM (automatic prefix caching) and SGLang (RadixAttention) keep the KV cache of earlier
prompts and skip the prefill of any prompt prefix they hold. :class:`PrefixCacheMeter` takes the
token ids of every prompt as a server receives them and reports three measures:

* ``shared_tokens``: per prompt, its longest common prefix with any earlier prompt, token-exact,
  from a radix trie (an unbounded cache; at least the last token is always computed). The sum is
  the total minus the distinct trie tokens, so it does not depend on the order of sending.
* ``block_shared_tokens``: the same at vLLM's granularity: only whole ``block_tokens`` blocks are
  cached, a block is found through the hash of its tokens chained to its parent's (vLLM's
  ``hash_block_tokens``), and a prompt whose every block is cached still recomputes its last one.
* ``bounded_shared_tokens``: blocks as above in a cache of ``cache_tokens`` tokens with LRU
  eviction (a request's tail blocks are evicted before its head, as vLLM frees them in reverse).
  This one depends on the order: requests on one passage sent far apart find it evicted.

Why hand-written: the measure needs only insertion and longest-prefix lookup over int token ids.
``pygtrie`` and ``datrie`` store a node per token (a dry run sends millions of tokens: gigabytes
in Python objects) and are not in the project's dependencies; vLLM's own block manager needs the
engine and a GPU. A radix trie whose edges are slices of the prompts' id arrays holds one node
per branch (about two per prompt) and compares edges with numpy.

:func:`llama31_chat_ids` lays out a request's messages as Llama-3.1's stock chat template does
(the ids vLLM prefills for it): ``tests/test_prefix_cache.py`` checks them against
``apply_chat_template``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

__all__ = ["TokenTrie", "BlockCache", "PrefixCacheMeter", "llama31_chat_ids", "LLAMA31_SYSTEM_PREAMBLE"]

# What Llama-3.1's stock template writes before the system message (no tools, default date);
# the same string as longctx.concat.chat.LLAMA31_SYSTEM_PREAMBLE (llm may not import concat).
LLAMA31_SYSTEM_PREAMBLE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"

VLLM_BLOCK_TOKENS = 16  # vLLM's default KV-cache block size (--block-size 16)


class _Node:
    __slots__ = ("edge", "children")

    def __init__(self, edge: np.ndarray):
        self.edge = edge  # the ids on the edge into this node (a view into an inserted prompt)
        self.children: dict[int, _Node] = {}


class TokenTrie:
    """A radix trie of id sequences: :meth:`insert` returns the longest common prefix of the new
    sequence with any sequence inserted before."""

    def __init__(self) -> None:
        self.root = _Node(np.empty(0, np.int32))
        self.distinct_tokens = 0  # ids stored on edges: total inserted minus the shared prefixes

    def insert(self, ids: Sequence[int] | np.ndarray) -> int:
        ids = np.asarray(ids, dtype=np.int32)
        node, pos, n = self.root, 0, len(ids)
        while pos < n:
            child = node.children.get(int(ids[pos]))
            if child is None:
                node.children[int(ids[pos])] = _Node(ids[pos:])
                self.distinct_tokens += n - pos
                return pos
            edge = child.edge
            m = min(len(edge), n - pos)
            diff = np.flatnonzero(edge[:m] != ids[pos:pos + m])
            k = int(diff[0]) if diff.size else m
            if k < len(edge):  # the new sequence leaves (or ends inside) this edge: split it at k
                middle = _Node(edge[:k])
                child.edge = edge[k:]
                middle.children[int(edge[k])] = child
                node.children[int(ids[pos])] = middle
                pos += k
                if pos < n:
                    middle.children[int(ids[pos])] = _Node(ids[pos:])
                    self.distinct_tokens += n - pos
                return pos
            node, pos = child, pos + k
        return pos


class BlockCache:
    """vLLM's prefix cache as a model: chained block hashes, optionally a bounded LRU."""

    def __init__(self, block_tokens: int = VLLM_BLOCK_TOKENS, capacity_tokens: int = 0):
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1, got {block_tokens}")
        self.block_tokens = block_tokens
        self.capacity_blocks = capacity_tokens // block_tokens if capacity_tokens else 0  # 0 = unbounded
        self.blocks: OrderedDict[int, None] = OrderedDict()  # block hash -> None, oldest first

    def insert(self, ids: Sequence[int] | np.ndarray) -> int:
        """Tokens of ``ids`` found cached (whole blocks), then cache its blocks."""
        ids = np.asarray(ids, dtype=np.int32)
        b, n = self.block_tokens, len(ids)
        hashes, parent = [], None
        for start in range(0, n - n % b, b):
            parent = hash((parent, ids[start:start + b].tobytes()))
            hashes.append(parent)
        hits = 0
        for h in hashes[:(n - 1) // b]:  # vLLM recomputes the last token: a full hit drops a block
            if h not in self.blocks:
                break
            hits += 1
        for h in reversed(hashes):  # the head ends most recently used: evicted last
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        if self.capacity_blocks:
            while len(self.blocks) > self.capacity_blocks:
                self.blocks.popitem(last=False)
        return hits * b


class PrefixCacheMeter:
    """Feed every prompt's ids in send order with :meth:`add`; :meth:`stats` reports the shares."""

    def __init__(self, block_tokens: int = VLLM_BLOCK_TOKENS, cache_tokens: int = 0):
        self.trie = TokenTrie()
        self.unbounded = BlockCache(block_tokens)
        self.bounded = BlockCache(block_tokens, cache_tokens) if cache_tokens else None
        self.block_tokens, self.cache_tokens = block_tokens, cache_tokens
        self.prompts = self.prompt_tokens = self.shared = self.block_shared = self.bounded_shared = 0

    def add(self, ids: Sequence[int] | np.ndarray) -> int:
        """Record one prompt; returns its token-exact shared prefix (at most all but its last token)."""
        ids = np.asarray(ids, dtype=np.int32)
        if len(ids) == 0:
            raise ValueError("an empty prompt has nothing to prefill")
        shared = min(self.trie.insert(ids), len(ids) - 1)
        self.prompts += 1
        self.prompt_tokens += len(ids)
        self.shared += shared
        self.block_shared += self.unbounded.insert(ids)
        if self.bounded is not None:
            self.bounded_shared += self.bounded.insert(ids)
        return shared

    def stats(self) -> dict:
        total = self.prompt_tokens or 1
        out = {"prompts": self.prompts, "prompt_tokens": self.prompt_tokens,
               "shared_tokens": self.shared, "shared_share": self.shared / total,
               "prefill_tokens_left": self.prompt_tokens - self.shared,
               "block_tokens": self.block_tokens, "block_shared_tokens": self.block_shared,
               "block_shared_share": self.block_shared / total,
               "block_prefill_tokens_left": self.prompt_tokens - self.block_shared}
        if self.bounded is not None:
            out.update(cache_tokens=self.cache_tokens, bounded_shared_tokens=self.bounded_shared,
                       bounded_shared_share=self.bounded_shared / total,
                       bounded_prefill_tokens_left=self.prompt_tokens - self.bounded_shared)
        return out


def llama31_chat_ids(messages: list[dict], tokenizer) -> list[int]:
    """Ids of ``messages`` in Llama-3.1's stock chat template, generation prompt included:
    ``<|begin_of_text|>``, the system turn (date lines, then the system message), every other turn,
    then the assistant header. Contents are trimmed, as the template does; special tokens split
    the text, so encoding piece by piece gives the ids of the rendered string."""
    special = tokenizer.special_id
    begin, end, eot = special("<|start_header_id|>"), special("<|end_header_id|>"), special("<|eot_id|>")

    def header(role: str) -> list[int]:
        return [begin, *tokenizer.encode(role), end, *tokenizer.encode("\n\n")]

    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"].strip(), messages[1:]
    ids = [special("<|begin_of_text|>"), *header("system"), *tokenizer.encode(LLAMA31_SYSTEM_PREAMBLE + system), eot]
    for message in messages:
        ids += [*header(message["role"]), *tokenizer.encode(message["content"].strip()), eot]
    return ids + header("assistant")
