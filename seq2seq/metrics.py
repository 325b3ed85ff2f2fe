"""Sequence metrics on padded id tensors: token accuracy and exact match against the reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _align(pred: torch.Tensor, ref: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(pred.shape[1], ref.shape[1])
    return F.pad(pred, (0, width - pred.shape[1]), value=pad_id), F.pad(ref, (0, width - ref.shape[1]), value=pad_id)


def token_matches(pred: torch.Tensor, ref: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (reference tokens predicted right at their position, reference tokens). Both (B,).

    pred: (B, T1) and ref: (B, T2) hold ids ending in <eos>, padded with pad_id; <eos> counts as a token.
    """
    pred, ref = _align(pred, ref, pad_id)
    real = ref != pad_id  # (B, T)
    return ((pred == ref) & real).sum(1), real.sum(1)


def exact_matches(pred: torch.Tensor, ref: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B,) bool: the whole prediction, <eos> included and nothing after it, equals the reference."""
    pred, ref = _align(pred, ref, pad_id)
    return (pred == ref).all(1)
