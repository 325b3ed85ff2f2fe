"""Fast paths beside the reference model (seq2seq/model.py), with its math: the rearranged teacher-forced decoder
loop that training runs, and the unrolled length-masked LSTM that static shapes (torch.compile, CUDA graphs, export)
need where packing cannot go. tests/test_model.py checks each against the reference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.gemm import RecurrentLinear, linear

if TYPE_CHECKING:
    from seq2seq.model import Encoder, Seq2Seq


def teacher_forced(model: Seq2Seq, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V): the loop of `Decoder.step` with every input known up front, rearranged for speed.

    The embedding half of layer 0's input projection (and every bias) runs once over all steps; each layer's
    per-step input and recurrent projections are one GEMM over [input; h] with the weights side by side; the
    query, key and vocabulary projections and all per-step weight gradients are one GEMM each (see
    seq2seq/gemm.py). Dropout masks are drawn in the same order as the step-by-step loop.
    """
    dec, attention = model.decoder, model.decoder.attention
    enc_out, h, c = model.encoder(src, src_len)  # (B, S, H), (L, B, H), (L, B, H)
    h, c = list(h.unbind(0)), list(c.unbind(0))  # one (B, H) per layer
    mask = torch.arange(src.shape[1], device=src.device) < src_len.to(src.device).unsqueeze(1)  # (B, S)
    keys = linear(enc_out, attention.key_proj.weight)  # (B, S, H)
    emb = dec.dropout(dec.embedding(tgt_in))  # (B, T, E)
    first = dec.cells[0]
    emb_dim = emb.shape[-1]
    # W_ih[:, :E] @ emb_t + b_ih + b_hh of layer 0, for all steps in one GEMM, time-major so that each step's
    # slice is contiguous. Unbinding once matters: autograd turns an indexed slice's gradient into a zero-filled
    # (T, B, 4H) tensor per step, where unbind's backward stacks all steps' gradients once.
    emb_gates = linear(emb.transpose(0, 1), first.weight_ih[:, :emb_dim], first.bias_ih + first.bias_hh)
    emb_gates = emb_gates.unbind(0)  # T x (B, 4H)
    projections = [RecurrentLinear(torch.cat([first.weight_ih[:, emb_dim:], first.weight_hh], 1))]  # (4H, 2H)
    projections += [
        RecurrentLinear(torch.cat([cell.weight_ih, cell.weight_hh], 1), cell.bias_ih + cell.bias_hh)  # (4H, 2H)
        for cell in dec.cells[1:]
    ]
    query_proj = RecurrentLinear(attention.query_proj.weight, attention.query_proj.bias)  # (H, H)
    outputs = []
    for t in range(tgt_in.shape[1]):
        context, _ = attention.attend(query_proj(h[-1]), keys, enc_out, mask)  # (B, H)
        x = context
        for layer, projection in enumerate(projections):
            if layer > 0:
                x = dec.dropout(x)  # what nn.LSTM's `dropout` does between layers
            gates = projection(torch.cat([x, h[layer]], -1))  # (B, 4H)
            if layer == 0:
                gates = gates + emb_gates[t]
            h[layer], c[layer] = lstm_cell(gates, c[layer])  # (B, H) each
            x = h[layer]
        outputs.append(torch.cat([x, context], -1))  # (B, 2H): what `Decoder.project` reads
    # (B, T, V): the vocabulary projection waits until after the loop
    return linear(torch.stack(outputs, 1), dec.out.weight, dec.out.bias)


def static_encoder(
    encoder: Encoder, src: torch.Tensor, src_len: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`Encoder.forward` with static shapes and no host sync (for torch.compile and CUDA graphs): src_len (B,) on
    src's device. Outputs past a sequence's length are not zero, as packing makes them, but the attention masks
    them; the final states are the same."""
    embedded = encoder.dropout(encoder.embedding(src))  # (B, S, E)
    enc_out, h, c = masked_lstm(encoder.lstm, embedded, src_len)  # (B, S, H), L x (B, H)
    return enc_out, torch.stack(h), torch.stack(c)  # (B, S, H), (L, B, H), (L, B, H)


def masked_lstm(
    lstm: nn.LSTM, x: torch.Tensor, src_len: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """`lstm` (batch_first) over padded x (B, S, E), unrolled with static shapes and no host sync: each sequence
    keeps its state past its length, so the final states are those a packed call gives. Inter-layer dropout as
    nn.LSTM's. Returns the top layer's outputs (B, S, H), then the final h and c, one (B, H) per layer. The export
    runs the same steps as a `scan` (seq2seq/export.py)."""
    zeros = x.new_zeros(x.shape[0], lstm.hidden_size)  # (B, H)
    final_h, final_c = [], []
    for layer in range(lstm.num_layers):
        if layer > 0:
            x = F.dropout(x, lstm.dropout, lstm.training)  # what nn.LSTM does between layers
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        gates_x = x @ w_ih.T + bias  # (B, S, 4H): the input half of every step at once
        h, c, outputs = zeros, zeros, []
        for t in range(x.shape[1]):
            h_next, c_next = lstm_cell(gates_x[:, t] + h @ w_hh.T, c)  # (B, H) each
            valid = (src_len > t).unsqueeze(1)  # (B, 1): past its length a sequence keeps its final state
            h, c = torch.where(valid, h_next, h), torch.where(valid, c_next, c)
            outputs.append(h_next)  # outputs past the length are masked out of the attention
        x = torch.stack(outputs, dim=1)  # (B, S, H)
        final_h.append(h)
        final_c.append(c)
    return x, final_h, final_c


def lstm_cell(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.LSTMCell's update from its gate pre-activations (B, 4H), in PyTorch's gate order i, f, g, o."""
    i, f, g, o = gates.chunk(4, 1)  # (B, H) each
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
