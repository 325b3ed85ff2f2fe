"""Batched beam search for the Seq2Seq model (greedy decoding is `Seq2Seq.generate`); the beams advance through
`Seq2Seq.decode_step`, the step every decoder runs."""

from __future__ import annotations

import torch

from seq2seq.model import DecoderState, Seq2Seq


@torch.no_grad()
def beam_search(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, beam_size: int, max_len: int) -> torch.Tensor:
    """The highest log-probability sequence per source among `beam_size` beams: tokens (B, T<=max_len).

    Hypotheses that emitted <eos> stay in the beam with their score frozen (they can only extend with <pad>, at
    log-probability 0). Scores are plain sums of log-probabilities, without a length penalty: the synthetic tasks
    fix the target length, so no length bias needs correcting. Call in eval mode.
    """
    batch, k = src.shape[0], beam_size
    state = model.encode(src, src_len)

    def tile(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(k, dim=0)  # (B, ...) -> (B*K, ...), beams of a source adjacent

    state = DecoderState(*map(tile, state[:3]), [tile(x) for x in state.h], [tile(x) for x in state.c])
    scores = torch.full((batch, k), float("-inf"), device=src.device)  # (B, K)
    scores[:, 0] = 0.0  # all beams start identical: keep one, or the top-k would pick K copies of it
    token = torch.full((batch * k,), model.bos_id, dtype=torch.long, device=src.device)  # (B*K,)
    finished = torch.zeros_like(token, dtype=torch.bool)
    sequences = token.new_empty(batch * k, 0)  # (B*K, t)
    base = (torch.arange(batch, device=src.device) * k).unsqueeze(1)  # (B, 1): first beam row of each source
    for _ in range(max_len):
        logits, state, _ = model.decode_step(token, state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        vocab = log_probs.shape[-1]
        frozen = torch.full_like(log_probs, float("-inf"))
        frozen[:, model.pad_id] = 0.0
        log_probs = torch.where(finished.unsqueeze(1), frozen, log_probs)
        candidates = (scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)  # (B, K*V)
        scores, index = candidates.topk(k, dim=1)  # (B, K)
        rows = (base + index // vocab).reshape(-1)  # (B*K,) the beam each survivor extends
        token = (index % vocab).reshape(-1)  # (B*K,)
        # Only the LSTM state differs between the beams of a source; the encoder's outputs are the same copies.
        state = state._replace(h=[x[rows] for x in state.h], c=[x[rows] for x in state.c])
        sequences = torch.cat([sequences[rows], token.unsqueeze(1)], dim=1)
        finished = finished[rows] | (token == model.eos_id)
        if bool(finished.all()):
            break
    best = (base.squeeze(1) + scores.argmax(dim=1)).reshape(-1)  # (B,)
    return sequences[best]
