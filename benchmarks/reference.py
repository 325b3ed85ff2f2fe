"""A naive reference of the seed's math, step by step as the seed computes it (time-major, the attention
Linear over [hidden; encoder output] at every step, one decoder nn.LSTM call per step, the output layer inside
the loop). It exists to check the project's model against (tests) and to measure it against (benchmarks); it
keeps the seed's lack of padding masks, so compare it on batches without padding.
"""

from __future__ import annotations

import torch
from torch import nn

from seq2seq.model import Seq2Seq


class ReferenceSeq2Seq(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int, hidden_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        inter = dropout if num_layers > 1 else 0.0
        self.enc_embedding = nn.Embedding(vocab_size, emb_dim)
        self.enc_lstm = nn.LSTM(emb_dim, hidden_dim, num_layers, dropout=inter)
        self.dec_embedding = nn.Embedding(vocab_size, emb_dim)
        self.dec_lstm = nn.LSTM(emb_dim + hidden_dim, hidden_dim, num_layers, dropout=inter)
        self.attn = nn.Linear(2 * hidden_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, 1, bias=False)
        self.fc_out = nn.Linear(2 * hidden_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)

    def attention(self, hidden: torch.Tensor, enc_out: torch.Tensor) -> torch.Tensor:
        # hidden: (L, B, H); enc_out: (S, B, H)
        src_len = enc_out.shape[0]
        query = hidden[-1].unsqueeze(1).repeat(1, src_len, 1)  # (B, S, H)
        keys = enc_out.permute(1, 0, 2)  # (B, S, H)
        energy = torch.tanh(self.attn(torch.cat((query, keys), dim=2)))  # (B, S, H)
        return torch.softmax(self.v(energy).squeeze(2), dim=1)  # (B, S)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src: (S, B), tgt: (T, B) starting with <bos>; returns logits (T-1, B, V), teacher forcing 1."""
        enc_out, (hidden, cell) = self.enc_lstm(self.dropout(self.enc_embedding(src)))  # (S, B, H)
        outputs = []
        for t in range(tgt.shape[0] - 1):
            embedded = self.dropout(self.dec_embedding(tgt[t].unsqueeze(0)))  # (1, B, E)
            weights = self.attention(hidden, enc_out).unsqueeze(1)  # (B, 1, S)
            context = torch.bmm(weights, enc_out.permute(1, 0, 2)).permute(1, 0, 2)  # (1, B, H)
            output, (hidden, cell) = self.dec_lstm(torch.cat((embedded, context), dim=2), (hidden, cell))
            outputs.append(self.fc_out(torch.cat((output.squeeze(0), context.squeeze(0)), dim=1)))  # (B, V)
        return torch.stack(outputs)  # (T-1, B, V)

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, max_len: int, bos_id: int, eos_id: int, pad_id: int) -> torch.Tensor:
        """Greedy decoding by the same per-step math (the seed has none): src (S, B) -> tokens (B, <=max_len),
        <pad> after each sequence's <eos>. Like the seed, it attends to padding too."""
        enc_out, (hidden, cell) = self.enc_lstm(self.enc_embedding(src))  # (S, B, H)
        token = torch.full((src.shape[1],), bos_id, dtype=torch.long)  # (B,)
        finished = torch.zeros_like(token, dtype=torch.bool)
        tokens = []
        for _ in range(max_len):
            weights = self.attention(hidden, enc_out).unsqueeze(1)  # (B, 1, S)
            context = torch.bmm(weights, enc_out.permute(1, 0, 2)).permute(1, 0, 2)  # (1, B, H)
            step_in = torch.cat((self.dec_embedding(token.unsqueeze(0)), context), dim=2)  # (1, B, E + H)
            output, (hidden, cell) = self.dec_lstm(step_in, (hidden, cell))
            logits = self.fc_out(torch.cat((output.squeeze(0), context.squeeze(0)), dim=1))  # (B, V)
            token = logits.argmax(-1).masked_fill(finished, pad_id)
            tokens.append(token)
            finished = finished | (token == eos_id)
            if bool(finished.all()):
                break
        return torch.stack(tokens, 1)

    @torch.no_grad()
    def load_from(self, model: Seq2Seq) -> ReferenceSeq2Seq:
        """Copy the project model's weights into the seed's layout (the attention Linear is split there)."""
        enc, dec = model.encoder, model.decoder
        self.enc_embedding.weight.copy_(enc.embedding.weight)
        self.enc_lstm.load_state_dict(enc.lstm.state_dict())
        self.dec_embedding.weight.copy_(dec.embedding.weight)
        for layer, cell in enumerate(dec.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.dec_lstm, f"{name}_l{layer}").copy_(getattr(cell, name))
        hidden = dec.attention.query_proj.weight.shape[0]
        self.attn.weight[:, :hidden].copy_(dec.attention.query_proj.weight)
        self.attn.weight[:, hidden:].copy_(dec.attention.key_proj.weight)
        self.attn.bias.copy_(dec.attention.query_proj.bias)
        self.v.weight.copy_(dec.attention.v.weight)
        self.fc_out.load_state_dict(dec.out.state_dict())
        return self
