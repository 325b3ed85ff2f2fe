"""Seq2Seq LSTM encoder-decoder with additive attention (Bahdanau, Cho & Bengio 2014, arXiv:1409.0473).

The seed's architecture: an embedding + multi-layer LSTM encoder; additive attention over the encoder outputs,
queried by the decoder's top hidden state from the previous step; an LSTM decoder fed [embedding; context]; an
output layer over [decoder output; context]. Unlike the seed, padding is masked everywhere (packed encoder, masked
attention, `padding_idx`), the key side of the attention is projected once per batch and the vocabulary projection
runs once after the decoder loop (fairseq and Tacotron 2 do the same), and teacher forcing is a per-token tensor
mask, so a training step never waits on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import require
from seq2seq.gemm import RecurrentLinear, linear


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

    def static(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`forward` with static shapes and no host sync (for torch.compile and CUDA graphs): src_len (B,) on
        src's device. Outputs past a sequence's length are not zero, as packing makes them, but the attention masks
        them; the final states are the same."""
        embedded = self.dropout(self.embedding(src))  # (B, S, E)
        enc_out, h, c = masked_lstm(self.lstm, embedded, src_len)  # (B, S, H), L x (B, H)
        return enc_out, torch.stack(h), torch.stack(c)  # (B, S, H), (L, B, H), (L, B, H)


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
        self,
        emb_t: torch.Tensor,
        h: list[torch.Tensor],
        c: list[torch.Tensor],
        keys: torch.Tensor,
        enc_out: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """One decoder step. emb_t: (B, E) embedded input; h, c: one (B, H) per layer."""
        context, weights = self.attention(h[-1], keys, enc_out, mask)  # (B, H), (B, S)
        x = torch.cat([emb_t, context], dim=-1)  # (B, E + H)
        new_h, new_c = [], []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                x = self.dropout(x)  # what nn.LSTM's `dropout` does between layers
            h_l, c_l = cell(x, (h[layer], c[layer]))  # (B, H) each
            new_h.append(h_l)
            new_c.append(c_l)
            x = h_l
        return x, context, new_h, new_c, weights

    def project(self, output: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([output, context], dim=-1))  # (..., V)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.encoder = Encoder(vocab_size, cfg, pad_id)
        self.decoder = Decoder(vocab_size, cfg, pad_id)

    def _encode(self, src: torch.Tensor, src_len: torch.Tensor, static: bool = False):
        encode = self.encoder.static if static else self.encoder
        enc_out, h, c = encode(src, src_len)  # (B, S, H), (L, B, H), (L, B, H)
        positions = torch.arange(src.shape[1], device=src.device)
        mask = positions.unsqueeze(0) < src_len.to(src.device).unsqueeze(1)  # (B, S)
        keys = self.decoder.attention.key_proj(enc_out)  # (B, S, H): the step-independent half, once per batch
        return enc_out, keys, mask, list(h.unbind(0)), list(c.unbind(0))

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
        `static`: no packing and no host sync, for torch.compile and CUDA graphs (`Encoder.static`); the batch may
        be padded to any fixed width, src_len must then be on src's device.
        """
        always_truth = not isinstance(teacher_forcing, torch.Tensor) and teacher_forcing >= 1.0
        # The rearranged loop keeps one dtype through its hand-written backward; under autocast (bf16 on CUDA)
        # the step-by-step loop runs, which autograd differentiates in whatever dtypes autocast picked. A compiled
        # (static) forward also runs the step loop: the compiler fuses it itself.
        if always_truth and not static and not torch.is_autocast_enabled(src.device.type):
            return self._forward_teacher_forced(src, src_len, tgt_in)
        enc_out, keys, mask, h, c = self._encode(src, src_len, static)
        batch, steps = tgt_in.shape
        emb = self.decoder.dropout(self.decoder.embedding(tgt_in))  # (B, T, E): all teacher inputs at once
        if always_truth:
            # Every input is known up front, so the vocabulary projection can wait until after the loop.
            outputs, contexts = [], []
            for t in range(steps):
                out, context, h, c, _ = self.decoder.step(emb[:, t], h, c, keys, enc_out, mask)
                outputs.append(out)
                contexts.append(context)
            return self.decoder.project(torch.stack(outputs, 1), torch.stack(contexts, 1))  # (B, T, V)
        use_truth = torch.rand(batch, steps, device=tgt_in.device) < teacher_forcing  # (B, T)
        logits, emb_t = [], emb[:, 0]
        for t in range(steps):
            out, context, h, c, _ = self.decoder.step(emb_t, h, c, keys, enc_out, mask)
            logits.append(self.decoder.project(out, context))  # (B, V): needed now, to feed the prediction back
            if t + 1 < steps:
                predicted = self.decoder.dropout(self.decoder.embedding(logits[-1].argmax(-1)))  # (B, E)
                emb_t = torch.where(use_truth[:, t + 1, None], emb[:, t + 1], predicted)
        return torch.stack(logits, 1)  # (B, T, V)

    def _forward_teacher_forced(self, src: torch.Tensor, src_len: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """The decoder loop of `Decoder.step` with every input known up front, rearranged for speed; same math.

        The embedding half of layer 0's input projection (and every bias) runs once over all steps; each layer's
        per-step input and recurrent projections are one GEMM over [input; h] with the weights side by side; the
        query, key and vocabulary projections and all per-step weight gradients are one GEMM each (see
        seq2seq/gemm.py). Dropout masks are drawn in the same order as the step-by-step loop.
        """
        dec, attention = self.decoder, self.decoder.attention
        enc_out, h, c = self.encoder(src, src_len)  # (B, S, H), (L, B, H), (L, B, H)
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

    @torch.no_grad()
    def generate(
        self, src: torch.Tensor, src_len: torch.Tensor, max_len: int, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Batched greedy decoding: tokens (B, T<=max_len) ending in <eos> then <pad>, and attention (B, T, S).

        Stops when every sequence has emitted <eos>, or after max_len steps. Call in eval mode.
        """
        enc_out, keys, mask, h, c = self._encode(src, src_len)
        token = torch.full((src.shape[0],), self.bos_id, dtype=torch.long, device=src.device)  # (B,)
        finished = torch.zeros_like(token, dtype=torch.bool)
        tokens, attention = [], []
        for _ in range(max_len):
            emb_t = self.decoder.embedding(token)  # (B, E)
            out, context, h, c, weights = self.decoder.step(emb_t, h, c, keys, enc_out, mask)
            token = self.decoder.project(out, context).argmax(-1).masked_fill(finished, self.pad_id)  # (B,)
            tokens.append(token)
            if return_attention:
                attention.append(weights)
            finished = finished | (token == self.eos_id)
            if bool(finished.all()):  # one sync per step is fine at inference; it saves the remaining steps
                break
        weights_out = torch.stack(attention, 1) if return_attention else None  # (B, T, S)
        return torch.stack(tokens, 1), weights_out


def masked_lstm(
    lstm: nn.LSTM, x: torch.Tensor, src_len: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """`lstm` (batch_first) over padded x (B, S, E), unrolled with static shapes and no host sync: each sequence
    keeps its state past its length, so the final states are those a packed call gives. Inter-layer dropout as
    nn.LSTM's. Returns the top layer's outputs (B, S, H), then the final h and c, one (B, H) per layer. Used where
    packing cannot go: torch.compile and CUDA graphs (the export runs the same steps as a `scan`)."""
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


def sequence_loss(logits: torch.Tensor, tgt_out: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Mean cross-entropy over the non-padding target tokens. logits: (B, T, V), tgt_out: (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=pad_id)
