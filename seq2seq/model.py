"""Seq2Seq LSTM encoder-decoder with additive attention (Bahdanau, Cho & Bengio 2014, arXiv:1409.0473).

The seed's architecture: an embedding + multi-layer LSTM encoder; additive attention over the encoder outputs,
queried by the decoder's top hidden state from the previous step; an LSTM decoder fed [embedding; context]; an
output layer over [decoder output; context]. Unlike the seed, padding is masked everywhere (packed encoder, masked
attention, `padding_idx`), the key side of the attention is projected once per batch and the vocabulary projection
runs once after the decoder loop (fairseq and Tacotron 2 do the same), and teacher forcing is a per-token tensor
mask, so a training step never waits on the host.

Generation, beam search (seq2seq/decoding.py) and the exported decoder (seq2seq/export.py) all run `decode_step`.
A teacher-forced forward runs the rearranged loop of seq2seq/fast.py: the same math, tested against this file's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import require
from seq2seq.fast import static_encoder, teacher_forced


@dataclass(frozen=True)
class ModelConfig:
    """The `model` section of params.yaml (the vocabulary size comes from the data)."""

    emb_dim: int
    hidden_dim: int
    num_layers: int
    dropout: float

    def __post_init__(self) -> None:
        for name in ("emb_dim", "hidden_dim", "num_layers"):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


class Encoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(cfg.dropout)
        inter_layer_dropout = cfg.dropout if cfg.num_layers > 1 else 0.0  # nn.LSTM warns on dropout with 1 layer
        self.lstm = nn.LSTM(cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, dropout=inter_layer_dropout, batch_first=True)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # src: (B, S) ids, src_len: (B,) lengths (kept on the CPU: packing needs them there)
        embedded = self.dropout(self.embedding(src))  # (B, S, E)
        if bool((src_len == src.shape[1]).all()):
            # Nothing to mask: the plain call gives the same results without the packing's sort, gathers and
            # scatters (a few percent of the encoder's time).
            enc_out, (h, c) = self.lstm(embedded)  # (B, S, H), (L, B, H)
            return enc_out, h, c
        # Packing stops the LSTM at each sequence's end, so the final state has not consumed padding.
        packed = pack_padded_sequence(embedded, src_len.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, (h, c) = self.lstm(packed)  # h, c: (L, B, H), back in the batch's order
        enc_out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.shape[1])  # (B, S, H)
        return enc_out, h, c


class AdditiveAttention(nn.Module):
    """score(q, k_s) = v^T tanh(W_q q + W_k k_s + b): the seed's Linear(2H -> H) over [q; k_s], split in two."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(hidden_dim, hidden_dim)  # carries the seed's bias
        self.key_proj = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, enc_out: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # query: (B, H); keys = key_proj(enc_out): (B, S, H), computed once per batch; mask: (B, S) True = real token
        return self.attend(self.query_proj(query), keys, enc_out, mask)

    def attend(
        self, projected_query: torch.Tensor, keys: torch.Tensor, enc_out: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention given query_proj(query) (B, H): the training path projects the query its own way."""
        energy = torch.tanh(keys + projected_query.unsqueeze(1))  # (B, S, H)
        # Scores in fp32 with -inf at padding: a -1e10 fill overflows fp16, and bf16 loses the softmax's precision.
        scores = self.v(energy).squeeze(-1).float().masked_fill(~mask, float("-inf"))  # (B, S)
        weights = torch.softmax(scores, dim=-1).to(enc_out.dtype)  # (B, S); padding gets exactly 0
        context = torch.bmm(weights.unsqueeze(1), enc_out).squeeze(1)  # (B, H)
        return context, weights


class DecoderState(NamedTuple):
    """What a decoder step reads: the encoder's outputs, fixed for a batch, and the LSTM state each step updates."""

    enc_out: torch.Tensor  # (B, S, H)
    keys: torch.Tensor  # (B, S, H): key_proj(enc_out), the step-independent half of the attention, once per batch
    mask: torch.Tensor  # (B, S): True at real source tokens
    h: list[torch.Tensor]  # one (B, H) per layer
    c: list[torch.Tensor]  # one (B, H) per layer


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, cfg.emb_dim, padding_idx=pad_id)
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention = AdditiveAttention(cfg.hidden_dim)
        # One LSTMCell per layer: a single decoder step through cells is cheaper than a length-1 nn.LSTM call.
        sizes = [cfg.emb_dim + cfg.hidden_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1)
        self.cells = nn.ModuleList(nn.LSTMCell(size, cfg.hidden_dim) for size in sizes)
        self.out = nn.Linear(2 * cfg.hidden_dim, vocab_size)

    def step(
        self, emb_t: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, torch.Tensor, DecoderState, torch.Tensor]:
        """One decoder step from the embedded input emb_t (B, E): the top layer's output (B, H), the attention's
        context (B, H), the next state and the attention weights (B, S). The vocabulary projection is left to
        the caller, which may batch it over all steps."""
        context, weights = self.attention(state.h[-1], state.keys, state.enc_out, state.mask)  # (B, H), (B, S)
        x = torch.cat([emb_t, context], dim=-1)  # (B, E + H)
        new_h, new_c = [], []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                x = self.dropout(x)  # what nn.LSTM's `dropout` does between layers
            h_l, c_l = cell(x, (state.h[layer], state.c[layer]))  # (B, H) each
            new_h.append(h_l)
            new_c.append(c_l)
            x = h_l
        return x, context, state._replace(h=new_h, c=new_c), weights

    def project(self, output: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([output, context], dim=-1))  # (..., V)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.encoder = Encoder(vocab_size, cfg, pad_id)
        self.decoder = Decoder(vocab_size, cfg, pad_id)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor, static: bool = False) -> DecoderState:
        """The state the first decoder step reads. src: (B, S) ids, src_len: (B,). `static`: the unpacked encoder
        of seq2seq/fast.py, for torch.compile and CUDA graphs (src_len must then be on src's device)."""
        encoder = static_encoder(self.encoder, src, src_len) if static else self.encoder(src, src_len)
        return self.first_state(*encoder, src_len)

    def first_state(
        self, enc_out: torch.Tensor, h: torch.Tensor, c: torch.Tensor, src_len: torch.Tensor
    ) -> DecoderState:
        """The decoder's first state from the encoder's outputs (B, S, H) and final states (L, B, H) (the export
        runs its own encoder loop, then this)."""
        positions = torch.arange(enc_out.shape[1], device=enc_out.device)
        mask = positions.unsqueeze(0) < src_len.to(enc_out.device).unsqueeze(1)  # (B, S)
        keys = self.decoder.attention.key_proj(enc_out)  # (B, S, H)
        return DecoderState(enc_out, keys, mask, list(h.unbind(0)), list(c.unbind(0)))

    def decode_step(self, token: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """One step of decoding, the one every decoder runs: the previous token (B,) -> logits (B, V), the next
        state, the attention weights (B, S). No dropout on the embedding: call in eval mode."""
        out, context, state, weights = self.decoder.step(self.decoder.embedding(token), state)
        return self.decoder.project(out, context), state, weights

    def greedy_step(
        self, token: torch.Tensor, finished: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, torch.Tensor, DecoderState, torch.Tensor]:
        """`decode_step`, then its most likely token (B,), <pad> for the sequences already `finished` (B,) with
        <eos>: what `generate` and the exported decoder run. Returns the token, finished, state and weights."""
        logits, state, weights = self.decode_step(token, state)
        token = logits.argmax(-1).masked_fill(finished, self.pad_id)  # (B,)
        return token, finished | (token == self.eos_id), state, weights

    def forward(
        self,
        src: torch.Tensor,
        src_len: torch.Tensor,
        tgt_in: torch.Tensor,
        teacher_forcing: float | torch.Tensor = 1.0,
        static: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) for the target inputs tgt_in (B, T), which start with <bos>.

        Each token after the first is the ground truth with probability `teacher_forcing`, else the model's own
        previous prediction; the coins are one tensor drawn on the device, per token. A float 1.0 means teacher
        forcing throughout; a 0-d tensor always takes the coin path (one compiled graph for every ratio).
        `static`: no packing and no host sync, for torch.compile and CUDA graphs (`fast.static_encoder`); the batch may
        be padded to any fixed width, src_len must then be on src's device.
        """
        always_truth = not isinstance(teacher_forcing, torch.Tensor) and teacher_forcing >= 1.0
        # The rearranged loop keeps one dtype through its hand-written backward; under autocast (bf16 on CUDA)
        # the step-by-step loop runs, which autograd differentiates in whatever dtypes autocast picked. A compiled
        # (static) forward also runs the step loop: the compiler fuses it itself.
        if always_truth and not static and not torch.is_autocast_enabled(src.device.type):
            return teacher_forced(self, src, src_len, tgt_in)  # seq2seq/fast.py
        state = self.encode(src, src_len, static)
        batch, steps = tgt_in.shape
        emb = self.decoder.dropout(self.decoder.embedding(tgt_in))  # (B, T, E): all teacher inputs at once
        if always_truth:
            # Every input is known up front, so the vocabulary projection can wait until after the loop.
            outputs, contexts = [], []
            for t in range(steps):
                out, context, state, _ = self.decoder.step(emb[:, t], state)
                outputs.append(out)
                contexts.append(context)
            return self.decoder.project(torch.stack(outputs, 1), torch.stack(contexts, 1))  # (B, T, V)
        use_truth = torch.rand(batch, steps, device=tgt_in.device) < teacher_forcing  # (B, T)
        logits, emb_t = [], emb[:, 0]
        for t in range(steps):
            out, context, state, _ = self.decoder.step(emb_t, state)
            logits.append(self.decoder.project(out, context))  # (B, V): needed now, to feed the prediction back
            if t + 1 < steps:
                predicted = self.decoder.dropout(self.decoder.embedding(logits[-1].argmax(-1)))  # (B, E)
                emb_t = torch.where(use_truth[:, t + 1, None], emb[:, t + 1], predicted)
        return torch.stack(logits, 1)  # (B, T, V)

    @torch.no_grad()
    def generate(
        self, src: torch.Tensor, src_len: torch.Tensor, max_len: int, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batched greedy decoding: tokens (B, T<=max_len) ending in <eos> then <pad>, and attention (B, T, S).

        Stops when every sequence has emitted <eos>, or after max_len steps. Call in eval mode.
        """
        state = self.encode(src, src_len)
        token = torch.full((src.shape[0],), self.bos_id, dtype=torch.long, device=src.device)  # (B,)
        finished = torch.zeros_like(token, dtype=torch.bool)
        tokens, attention = [], []
        for _ in range(max_len):
            token, finished, state, weights = self.greedy_step(token, finished, state)
            tokens.append(token)
            if return_attention:
                attention.append(weights)
            if bool(finished.all()):  # one sync per step is fine at inference; it saves the remaining steps
                break
        weights_out = torch.stack(attention, 1) if return_attention else None  # (B, T, S)
        return torch.stack(tokens, 1), weights_out


def sequence_loss(logits: torch.Tensor, tgt_out: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the non-padding target tokens. logits: (B, T, V), tgt_out: (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=pad_id)
