"""The model: padding never leaks, parity with the seed's math, it can learn, and greedy decoding stops."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from benchmarks.reference import ReferenceSeq2Seq
from seq2seq.data import pad_batch
from seq2seq.model import AdditiveAttention, Seq2Seq, sequence_loss
from tests.helpers import tiny_model_config

PAD, BOS, EOS, VOCAB = 0, 1, 2, 12


def make_model(seed: int = 0, **overrides) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(tiny_model_config(**overrides), VOCAB, PAD, BOS, EOS)


def ragged_batch():
    src = pad_batch([[4, 5, 6, 7, 8], [9, 10], [5, 6, 7]], PAD)  # (3, 5)
    src_len = torch.tensor([5, 2, 3])
    tgt = pad_batch([[BOS, 8, 7, 6, 5, 4, EOS], [BOS, 10, 9, EOS], [BOS, 7, 6, 5, EOS]], PAD)  # (3, 7)
    return src, src_len, tgt


def test_padding_gets_zero_attention_and_rows_sum_to_one():
    model = make_model().eval()
    src, src_len, _ = ragged_batch()
    _, weights = model.generate(src, src_len, max_len=6, return_attention=True)  # (B, T, S)
    pad = torch.arange(src.shape[1]) >= src_len[:, None]  # (B, S)
    assert (weights.masked_select(pad[:, None, :].expand_as(weights)) == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


def test_a_sequence_gives_the_same_logits_alone_or_padded_in_a_batch():
    # Checks the packed encoder and the attention mask together: padding must not change anything.
    model = make_model().eval()
    src, src_len, tgt = ragged_batch()
    batched = model(src, src_len, tgt[:, :-1])  # (3, 6, V)
    for i in range(3):
        s, t = src_len[i].item(), int((tgt[i] != PAD).sum())
        alone = model(src[i : i + 1, :s], src_len[i : i + 1], tgt[i : i + 1, : t - 1])
        torch.testing.assert_close(batched[i : i + 1, : t - 1], alone, atol=1e-6, rtol=1e-5)


def test_padding_embeddings_and_loss_ignore_pad():
    model = make_model()
    assert (model.encoder.embedding.weight[PAD] == 0).all() and (model.decoder.embedding.weight[PAD] == 0).all()
    logits = torch.randn(2, 3, VOCAB)
    tgt = torch.tensor([[4, EOS, PAD], [5, 6, EOS]])
    real = tgt != PAD
    expected = torch.nn.functional.cross_entropy(logits[real], tgt[real])
    torch.testing.assert_close(sequence_loss(logits, tgt, PAD), expected)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_logits_and_gradients_equal_the_seed_reference(num_layers):
    torch.manual_seed(1)
    model = make_model(num_layers=num_layers, dropout=0.5).eval()  # eval: dropout off, as the parity needs
    cfg = model.cfg
    reference = ReferenceSeq2Seq(VOCAB, cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout).eval()
    reference.load_from(model)
    src = torch.randint(3, VOCAB, (4, 6))  # no padding: the seed has no masks
    tgt = torch.cat([torch.full((4, 1), BOS), torch.randint(3, VOCAB, (4, 7))], 1)  # (B, 8)

    ours = model(src, torch.full((4,), 6), tgt[:, :-1])  # (B, T, V)
    theirs = reference(src.T, tgt.T).transpose(0, 1)  # (T, B, V) -> (B, T, V)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)

    sequence_loss(ours, tgt[:, 1:], PAD).backward()
    sequence_loss(theirs, tgt[:, 1:], PAD).backward()
    dec, enc, ref, H = model.decoder, model.encoder, reference, cfg.hidden_dim
    pairs = {  # our parameter's gradient -> the same weights' gradient in the seed's layout
        "enc.embedding": (enc.embedding.weight.grad, ref.enc_embedding.weight.grad),
        "dec.embedding": (dec.embedding.weight.grad, ref.dec_embedding.weight.grad),
        "attn.query": (dec.attention.query_proj.weight.grad, ref.attn.weight.grad[:, :H]),
        "attn.key": (dec.attention.key_proj.weight.grad, ref.attn.weight.grad[:, H:]),
        "attn.bias": (dec.attention.query_proj.bias.grad, ref.attn.bias.grad),
        "attn.v": (dec.attention.v.weight.grad, ref.v.weight.grad),
        "out.weight": (dec.out.weight.grad, ref.fc_out.weight.grad),
        "out.bias": (dec.out.bias.grad, ref.fc_out.bias.grad),
    }
    for layer, cell in enumerate(dec.cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            pairs[f"dec.{name}{layer}"] = (getattr(cell, name).grad, getattr(ref.dec_lstm, f"{name}_l{layer}").grad)
            pairs[f"enc.{name}{layer}"] = (
                getattr(enc.lstm, f"{name}_l{layer}").grad,
                getattr(ref.enc_lstm, f"{name}_l{layer}").grad,
            )
    for name, (ours_grad, ref_grad) in pairs.items():
        assert ours_grad is not None and ours_grad.abs().sum() > 0, name
        torch.testing.assert_close(ours_grad, ref_grad, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_unpadded_batch_skips_packing_with_the_same_results():
    model = make_model(num_layers=2).eval()  # eval: the LSTM's dropout draws differ between packed and plain
    encoder = model.encoder
    src = torch.randint(3, VOCAB, (4, 6))
    src_len = torch.full((4,), 6)  # no padding: the plain LSTM call
    enc_out, h, c = encoder(src, src_len)
    packed = pack_padded_sequence(encoder.embedding(src), src_len, batch_first=True, enforce_sorted=False)
    packed_out, (h_ref, c_ref) = encoder.lstm(packed)
    enc_ref, _ = pad_packed_sequence(packed_out, batch_first=True)
    for ours, theirs in ((enc_out, enc_ref), (h, h_ref), (c, c_ref)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    weight = encoder.lstm.weight_ih_l0
    ours_grad = torch.autograd.grad(enc_out.sum() + h.sum() + c.sum(), weight)[0]
    theirs_grad = torch.autograd.grad(enc_ref.sum() + h_ref.sum() + c_ref.sum(), weight)[0]
    torch.testing.assert_close(ours_grad, theirs_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_decode_step_fed_the_reference_gives_the_teacher_forced_logits(num_layers):
    """The one step that greedy decoding, beam search and the export run, fed the reference one token at a time,
    gives the teacher-forced forward's logits (the rearranged loop of seq2seq/fast.py) at every position."""
    model = make_model(num_layers=num_layers).eval()
    src, src_len, tgt = ragged_batch()
    state, steps = model.encode(src, src_len), []
    for t in range(tgt.shape[1] - 1):
        logits, state, weights = model.decode_step(tgt[:, t], state)  # (B, V), ..., (B, S)
        steps.append(logits)
    assert weights.shape == src.shape
    torch.testing.assert_close(torch.stack(steps, 1), model(src, src_len, tgt[:, :-1]), atol=1e-6, rtol=1e-5)


def step_by_step_logits(model: Seq2Seq, src, src_len, tgt_in) -> torch.Tensor:
    """Teacher forcing 1 through `Decoder.step` and `Decoder.project`, drawing dropout in the same order."""
    state = model.encode(src, src_len)
    emb = model.decoder.dropout(model.decoder.embedding(tgt_in))  # (B, T, E)
    outputs, contexts = [], []
    for t in range(tgt_in.shape[1]):
        out, context, state, _ = model.decoder.step(emb[:, t], state)
        outputs.append(out)
        contexts.append(context)
    return model.decoder.project(torch.stack(outputs, 1), torch.stack(contexts, 1))  # (B, T, V)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("padded", [False, True])
def test_teacher_forced_forward_equals_the_step_loop_with_dropout(num_layers, padded):
    model = make_model(num_layers=num_layers, dropout=0.5).train()  # train: the dropout masks must match too
    if padded:
        src, src_len, tgt = ragged_batch()
    else:
        src, src_len = torch.randint(3, VOCAB, (4, 6)), torch.full((4,), 6)
        tgt = torch.cat([torch.full((4, 1), BOS), torch.randint(3, VOCAB, (4, 7))], 1)  # (B, 8)
    results = []
    for forward in (
        lambda: model(src, src_len, tgt[:, :-1]),
        lambda: step_by_step_logits(model, src, src_len, tgt[:, :-1]),
    ):
        torch.manual_seed(7)
        model.zero_grad()
        logits = forward()
        sequence_loss(logits, tgt[:, 1:], PAD).backward()
        results.append((logits, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (ours, ours_grads), (theirs, theirs_grads) = results
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    for name, grad in theirs_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def test_overfits_one_small_batch():
    model = make_model(dropout=0.0)
    src, src_len, tgt = ragged_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        loss = sequence_loss(model(src, src_len, tgt[:, :-1]), tgt[:, 1:], PAD)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01
    pred, _ = model.eval().generate(src, src_len, max_len=10)
    assert torch.equal(pred, tgt[:, 1 : pred.shape[1] + 1])


def test_generate_stops_at_eos_or_max_len():
    model = make_model().eval()
    with torch.no_grad():
        model.decoder.out.bias[EOS] = 100.0  # makes <eos> the first prediction everywhere
    src, src_len, _ = ragged_batch()
    pred, _ = model.generate(src, src_len, max_len=9)
    assert pred.shape == (3, 1) and (pred == EOS).all()
    with torch.no_grad():
        model.decoder.out.bias[EOS] = -100.0  # never <eos>: runs to max_len
    pred, attention = model.generate(src, src_len, max_len=4, return_attention=True)
    assert pred.shape == (3, 4) and attention.shape == (3, 4, 5) and not (pred == EOS).any()


def test_pads_after_eos(monkeypatch):
    """Rows that finish early get <pad>, not whatever the model would go on to predict, while the others decode on;
    decoding stops once every row has finished. The vocabulary projection is replaced by scripted logits: row b says
    4, 5, 6, ... until its step ends[b], then <eos> at every step (so only the mask can put <pad> there)."""
    model = make_model().eval()
    src, src_len, _ = ragged_batch()

    def script(ends: list[int]):
        steps = iter(range(100))

        def project(output: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            t = next(steps)
            logits = torch.zeros(output.shape[0], VOCAB)  # (B, V)
            for b, end in enumerate(ends):
                logits[b, EOS if t >= end else 4 + t] = 1.0
            return logits

        monkeypatch.setattr(model.decoder, "project", project)

    script([1, 3, 99])  # the last row never finishes: decoding runs to max_len
    pred, _ = model.generate(src, src_len, max_len=6)
    assert pred.tolist() == [
        [4, EOS, PAD, PAD, PAD, PAD],
        [4, 5, 6, EOS, PAD, PAD],
        [4, 5, 6, 7, 8, 9],
    ]
    script([1, 3, 2])  # every row has finished after step 3
    pred, _ = model.generate(src, src_len, max_len=6)
    assert pred.tolist() == [[4, EOS, PAD, PAD], [4, 5, 6, EOS], [4, 5, EOS, PAD]]


def test_teacher_forcing_mask_is_seeded_and_feeds_predictions_back():
    model = make_model().eval()
    src, src_len, tgt = ragged_batch()
    tgt_in = tgt[:, :-1]  # (B, T)
    forced = model(src, src_len, tgt_in, teacher_forcing=1.0)
    torch.manual_seed(5)
    mixed_a = model(src, src_len, tgt_in, teacher_forcing=0.5)
    torch.manual_seed(5)
    mixed_b = model(src, src_len, tgt_in, teacher_forcing=0.5)
    free = model(src, src_len, tgt_in, teacher_forcing=0.0)
    torch.testing.assert_close(mixed_a, mixed_b)
    torch.testing.assert_close(forced[:, 0], free[:, 0])  # step 0 always reads <bos>
    assert not torch.allclose(forced, free)
    # With no teacher forcing, every step's input is the previous step's argmax: check against greedy decoding.
    greedy, _ = model.generate(src, src_len, max_len=tgt.shape[1] - 1)
    torch.testing.assert_close(free.argmax(-1)[:, : greedy.shape[1]].masked_fill(greedy == PAD, PAD), greedy)

    # A ratio of 0.5 mixes the two: the coins are the forward's first draw (eval mode: no dropout draws), so the
    # same seed gives them back; each step after the first reads the truth where its coin says so, else the
    # previous step's prediction. Fed those inputs, plain teacher forcing must give mixed_a's logits.
    torch.manual_seed(5)
    use_truth = torch.rand(tgt_in.shape) < 0.5  # (B, T)
    assert use_truth[:, 1:].any() and not use_truth[:, 1:].all()  # the seed draws both kinds of step
    fed = torch.where(use_truth, tgt_in, torch.cat([tgt_in[:, :1], mixed_a.argmax(-1)[:, :-1]], 1))  # (B, T)
    fed[:, 0] = tgt_in[:, 0]  # <bos>
    assert not torch.equal(fed, tgt_in) and not torch.equal(fed[:, 1:], free.argmax(-1)[:, :-1])
    torch.testing.assert_close(mixed_a, model(src, src_len, fed, teacher_forcing=1.0))
    assert not torch.allclose(mixed_a, forced) and not torch.allclose(mixed_a, free)


def test_masking_is_safe_in_half_precision():
    torch.manual_seed(0)
    attention = AdditiveAttention(8)
    enc_out = torch.randn(2, 4, 8) * 100  # large activations would overflow a -1e10 fill in fp16
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    for dtype in (torch.float16, torch.bfloat16):
        attention = attention.to(dtype)
        x = enc_out.to(dtype)
        context, weights = attention(x[:, 0], attention.key_proj(x), x, mask)
        assert torch.isfinite(context).all() and torch.isfinite(weights).all()
        assert (weights[~mask] == 0).all()


def test_bf16_autocast_forward_is_finite_and_close():
    model = make_model().eval()
    src, src_len, tgt = ragged_batch()
    full = model(src, src_len, tgt[:, :-1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(src, src_len, tgt[:, :-1])
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), full, atol=0.1, rtol=0.05)


def test_reference_greedy_decoding_equals_generate_without_padding():
    # time_to_quality.py scores the reference with its own greedy decoder; on unpadded batches it must agree.
    model = make_model(num_layers=2).eval()
    cfg = model.cfg
    reference = ReferenceSeq2Seq(VOCAB, cfg.emb_dim, cfg.hidden_dim, cfg.num_layers, cfg.dropout).eval()
    reference.load_from(model)
    src = torch.randint(3, VOCAB, (5, 6))
    ours, _ = model.generate(src, torch.full((5,), 6), max_len=8)
    theirs = reference.greedy(src.T, 8, BOS, EOS, PAD)
    assert torch.equal(ours, theirs)


def test_bf16_autocast_stays_within_tolerance_of_fp32():
    # The CUDA default (train.bf16): autocast runs the GEMMs in bf16; the loss, softmax and scores stay fp32.
    model = make_model(num_layers=2).eval()
    src, src_len, tgt = ragged_batch()
    results = []
    for bf16 in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(src, src_len, tgt[:, :-1])  # (B, T, V)
            loss = sequence_loss(logits, tgt[:, 1:], PAD)
        loss.backward()
        results.append((logits.float(), loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (logits32, loss32, grads32), (logits16, loss16, grads16) = results
    assert logits16.dtype == torch.float32 and not torch.equal(logits16, logits32)  # bf16 really ran
    torch.testing.assert_close(logits16, logits32, atol=0.05, rtol=0.02)
    assert abs(loss16 - loss32) / loss32 < 0.01
    flat32 = torch.cat([g.flatten() for g in grads32.values()])
    flat16 = torch.cat([grads16[name].flatten() for name in grads32])
    assert (flat16 - flat32).norm() / flat32.norm() < 0.02  # the gradient that clipping and Adam see
    for name, grad in grads32.items():
        # Per parameter, relative to its own norm, floored: a gradient 1e-5 of the whole is bf16 noise.
        error = (grads16[name] - grad).norm() / grad.norm().clamp_min(1e-3 * flat32.norm())
        assert error < 0.05, f"{name}: relative gradient error {error:.3f}"


def _widened(src: torch.Tensor, tgt: torch.Tensor, extra: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch padded `extra` columns wider: a fixed width, as a compiled step's batches have."""
    return torch.nn.functional.pad(src, (0, extra), value=PAD), torch.nn.functional.pad(tgt, (0, extra), value=PAD)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_static_forward_on_wider_padding_equals_the_packed_forward(num_layers):
    """The static-shape path (unrolled masked encoder, no packing, no host sync) that torch.compile and CUDA graphs
    run gives the packed forward's logits on every real position, and the same loss and gradients."""
    src, src_len, tgt = ragged_batch()
    wide_src, wide_tgt = _widened(src, tgt)
    results = []
    for static, (s, t) in ((False, (src, tgt)), (True, (wide_src, wide_tgt))):
        model = make_model(num_layers=num_layers)
        logits = model(s, src_len, t[:, :-1], static=static)  # (B, T, V)
        sequence_loss(logits, t[:, 1:], PAD).backward()
        results.append((logits[:, : tgt.shape[1] - 1], {n: p.grad for n, p in model.named_parameters()}))
    (packed, packed_grads), (static, static_grads) = results
    real = (tgt[:, 1:] != PAD).unsqueeze(-1).expand_as(packed)
    torch.testing.assert_close(static[real], packed[real], atol=1e-6, rtol=1e-5)
    for name, grad in packed_grads.items():
        torch.testing.assert_close(static_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_static_forward_takes_the_teacher_forcing_ratio_as_a_tensor():
    """A tensor ratio runs the coin path (one compiled graph for a whole schedule): 1 feeds the truth like the
    float 1.0, and 0 feeds the predictions back like the float 0.0, also on padding the eager path trims away."""
    model = make_model().eval()
    src, src_len, tgt = ragged_batch()
    wide_src, wide_tgt = _widened(src, tgt)
    width = tgt.shape[1] - 1
    for ratio in (1.0, 0.0):
        eager = model(src, src_len, tgt[:, :-1], ratio)
        static = model(wide_src, src_len, wide_tgt[:, :-1], torch.tensor(ratio), static=True)[:, :width]
        real = (tgt[:, 1:] != PAD).unsqueeze(-1).expand_as(eager)
        torch.testing.assert_close(static[real], eager[real], atol=1e-6, rtol=1e-5)
