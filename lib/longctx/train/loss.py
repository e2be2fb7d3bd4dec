"""Answer-only next-token loss that never builds the ``tokens x vocab`` logits tensor.

Stage-2 samples carry labels only on answers (about 10% of a million-token sample). The loss:

1. :func:`shift_labels` turns unshifted labels into next-token targets on the *full* sequence,
   before :func:`longctx.train.ulysses.shard_inputs` cuts it (a shard's last token predicts the next
   shard's first token), with -100 at the last token of every packed document.
2. :func:`answer_loss_sum` picks the hidden states whose target is not -100 and projects them
   to the vocabulary ``chunk_tokens`` at a time, in one autograd function: its logits exist only
   while a chunk is computed (forward) or recomputed (backward), and backward writes each
   chunk's gradient into one buffer for the hidden states and one for the projection: peak
   extra memory is ``O(chunk_tokens x vocab)``, not ``O(tokens x vocab)``, and no per-chunk
   full-size gradient exists.
3. The sum is divided by the number of answer tokens of the whole step, counted over every
   sequence- and data-parallel rank (:func:`global_answer_tokens`), so each token weighs the
   same wherever it lives. A shard or a whole step without answer tokens yields 0, not NaN,
   and still runs the backward (its collectives must match the other ranks').

:class:`AnswerOnlyLM` wraps a transformers causal LM (``get_decoder()`` + ``lm_head``) so the
loss runs inside the module FSDP wraps (the head's weight is unsharded there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import dist

__all__ = ["IGNORE_INDEX", "shift_labels", "answer_rows", "answer_loss_sum", "global_answer_tokens", "AnswerOnlyLM"]

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token targets: ``out[:, t] = labels[:, t + 1]``; -100 at the end of the sequence and,
    if ``position_ids`` restart (packed documents), at the last token of each document."""
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:, :-1] = labels[:, 1:]
    if position_ids is not None:
        boundary = torch.diff(position_ids, dim=-1) != 1             # token t ends a document
        out[:, :-1][boundary] = IGNORE_INDEX
    return out


def _logits(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = h @ weight.t()
    if logits.dtype in (torch.bfloat16, torch.float16):
        logits = logits.float()   # softmax in fp32 at least; float64 runs keep float64 (checkable below 1e-7)
    return logits


class _ChunkedAnswerCE(torch.autograd.Function):
    """Summed cross-entropy of ``hidden[rows]`` projected by ``weight``, ``chunk`` rows at a time.

    Forward keeps no logits; backward recomputes each chunk's logits and writes its gradient into
    one ``hidden``-sized buffer (rows are distinct: ``index_copy_``) and one ``weight``-sized
    buffer (``addmm_``). Autograd over per-chunk checkpoints would instead allocate a
    full-size zero gradient per chunk (``index_select``'s backward) and sum them; this is the
    pattern of ALST's ``TiledFusedLogitsLoss`` and Liger's fused linear cross-entropy, written
    here because neither runs on CPU nor takes an index of answer rows.
    """

    @staticmethod
    def forward(ctx, hidden, weight, rows, targets, chunk):
        total = None
        for start in range(0, rows.numel(), chunk):
            r = rows[start:start + chunk]
            part = F.cross_entropy(_logits(hidden.index_select(0, r), weight), targets[start:start + chunk],
                                   reduction="sum")
            total = part if total is None else total + part
        if total is None:
            total = torch.zeros((), dtype=_logits(hidden[:0], weight[:0]).dtype, device=hidden.device)
        ctx.save_for_backward(hidden, weight, rows, targets)
        ctx.chunk = chunk
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, rows, targets = ctx.saved_tensors
        dh = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        dw = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, rows.numel(), ctx.chunk):
            r, y = rows[start:start + ctx.chunk], targets[start:start + ctx.chunk]
            h = hidden.index_select(0, r)
            d = torch.softmax(_logits(h, weight), dim=-1)            # d loss / d logits = softmax - onehot
            d[torch.arange(r.numel(), device=d.device), y] -= 1
            d = (d * grad).to(h.dtype)
            if dh is not None:
                dh.index_copy_(0, r, d @ weight)
            if dw is not None:
                dw.addmm_(d.t(), h)
        return dh, dw, None, None, None


def answer_rows(targets: torch.Tensor) -> torch.Tensor:
    """Row indices of the flat ``targets`` that are not -100 (a data-dependent shape:
    :mod:`longctx.train.memtrack` substitutes the real rows on fake tensors)."""
    return (targets != IGNORE_INDEX).nonzero().squeeze(1)


def answer_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                    chunk_tokens: int = 1024) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over tokens whose (shifted) label is not -100, and their count.

    ``hidden [..., d]`` final hidden states, ``weight [V, d]`` the output projection, ``labels``
    shifted targets of shape ``hidden.shape[:-1]``. Logits are built ``chunk_tokens`` rows at a
    time and recomputed in backward, whose gradients go into one buffer per input. The result
    always depends on ``hidden`` and on ``weight`` (zero gradients when there is nothing to
    score), so every rank runs the same backward and every parameter gets a gradient.
    """
    h = hidden.reshape(-1, hidden.shape[-1])
    y = labels.reshape(-1)
    picked = answer_rows(y)
    total = _ChunkedAnswerCE.apply(h, weight, picked, y.index_select(0, picked), int(chunk_tokens))
    return total, int(picked.numel())


def global_answer_tokens(labels: list[torch.Tensor] | torch.Tensor, group=None) -> int:
    """Answer tokens (label != -100) in ``labels`` summed over ``group`` (default: every rank).

    Call it with every micro-batch of an optimizer step before the first forward: the loss of
    each micro-batch is then divided by the same step-wide count.
    """
    if isinstance(labels, torch.Tensor):
        labels = [labels]
    count = sum(int((t != IGNORE_INDEX).sum()) for t in labels)
    counter = torch.tensor([count], dtype=torch.int64, device=dist.current().device)  # nccl wants GPU tensors
    return int(dist.all_reduce(counter, "sum", group=group).item())


class AnswerOnlyLM(nn.Module):
    """A causal LM whose forward returns the answer-only loss of its local tokens.

    ``forward(input_ids, labels, position_ids, loss_scale)`` returns ``(loss, loss_sum, n_tokens)``:
    ``loss = loss_sum * loss_scale`` for backward, the detached local sum and the local count for
    logging. ``loss_scale`` is ``1 / (global answer tokens of the step)``, times the factor the
    gradient reduction later divides by (FSDP averages over its ranks; see ``longctx.train.stage``).
    """

    def __init__(self, lm: nn.Module, chunk_tokens: int = 1024):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = int(chunk_tokens)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                loss_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
        hidden = self.lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        weight = self.lm.get_output_embeddings().weight
        loss_sum, n = answer_loss_sum(hidden, weight, labels, self.chunk_tokens)
        return loss_sum * loss_scale, loss_sum.detach(), n
