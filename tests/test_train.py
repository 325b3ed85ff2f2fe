"""The training loop: schedules, early stopping, one log call per epoch, and a refusal to save NaN weights."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from seq2seq import train
from seq2seq.config import ConfigError
from seq2seq.model import Seq2Seq
from seq2seq.train import NonFiniteError, adam, fit, learning_rate, teacher_forcing_ratio, training_loss
from seq2seq.train_state import EarlyStopping, FitResult
from tests.helpers import tiny_model_config, tiny_train_config

EXTRA = 3  # evaluate.max_extra_len: validation decodes up to a batch's longest source + this many tokens


def test_teacher_forcing_schedule_decays_linearly_then_holds():
    cfg = tiny_train_config(tf_start=1.0, tf_end=0.5, tf_decay_epochs=4)
    assert [teacher_forcing_ratio(cfg, e) for e in (1, 3, 5, 9)] == [1.0, 0.75, 0.5, 0.5]
    assert teacher_forcing_ratio(tiny_train_config(tf_decay_epochs=0, tf_start=0.7, tf_end=0.2), 9) == 0.7


def test_learning_rate_schedules():
    cosine = tiny_train_config(lr=0.01, lr_schedule="cosine", lr_final_ratio=0.1, max_epochs=5)
    lrs = [learning_rate(cosine, e) for e in range(1, 6)]
    assert math.isclose(lrs[0], 0.01) and math.isclose(lrs[-1], 0.001) and math.isclose(lrs[2], 0.0055)
    assert all(a > b for a, b in itertools.pairwise(lrs))
    assert learning_rate(tiny_train_config(lr_schedule="constant", lr=0.02), 3) == 0.02


def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=2, min_delta=0.1)
    assert stopper.update(1.0, 1)
    assert not stopper.update(0.95, 2)  # better, but by less than min_delta
    assert not stopper.should_stop
    assert stopper.update(0.8, 3) and stopper.bad_epochs == 0
    assert not stopper.update(0.9, 4) and not stopper.update(0.85, 5)
    assert stopper.should_stop and stopper.best_epoch == 3


def _model(seed: int = 0, **overrides) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(tiny_model_config(**overrides), 12, 0, 1, 2)


def _fit(model: Seq2Seq, splits, cfg, log=lambda *a: None, save_state=None, **kwargs) -> FitResult:
    """`fit` on the CPU over the tiny dataset's train and val splits."""
    cpu = torch.device("cpu")
    return fit(model, splits["train"], splits["val"], cfg, cpu, log, save_state, max_extra_len=EXTRA, **kwargs)


def test_the_fused_adam_steps_like_the_plain_one():
    torch.manual_seed(0)
    plain = torch.nn.Linear(8, 4)
    fused = torch.nn.Linear(8, 4)
    fused.load_state_dict(plain.state_dict())
    initial = plain.weight.detach().clone()
    optimizers = [torch.optim.Adam(plain.parameters(), lr=0.01), adam(fused.parameters(), 0.01)]
    assert optimizers[1].defaults["fused"]  # the fast kernel is the one under test
    for _ in range(5):
        x = torch.randn(16, 8)
        for model, optimizer in zip((plain, fused), optimizers, strict=True):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(plain.parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert (plain.weight - initial).abs().max() > 0.02  # they did step (lr 0.01, 5 steps)


def test_fit_logs_each_epoch_keeps_the_best_weights_and_learns(tiny_dataset, monkeypatch):
    """The kept weights are the best epoch's, not the last's. The real validation loss falls every epoch here, so
    it is raised by 10 from epoch 3 on: epoch 2 is then the best, and patience lets epochs 3 and 4 run."""
    _, splits = tiny_dataset
    logged, states = [], []
    real_score = train.score

    def worse_after_epoch_2(*args, **kwargs):
        assert args[3] == EXTRA  # validation decodes as the test does: up to the longest source + max_extra_len
        scores = real_score(*args, **kwargs)
        scores.metrics["loss"] += 10.0 if len(logged) >= 2 else 0.0  # len(logged): epochs done
        return scores

    monkeypatch.setattr(train, "score", worse_after_epoch_2)
    cfg = tiny_train_config(max_epochs=4, patience=4, tf_end=0.5)  # tf_end: the schedule checked below
    model = _model()
    result = _fit(model, splits, cfg, lambda epoch, row: logged.append((epoch, row)), states.append)
    assert [e for e, _ in logged] == [1, 2, 3, 4] and [s["epoch"] for s in states] == [1, 2, 3, 4]
    expected = {"train_loss", "val_loss", "val_token_acc", "val_exact_match", "grad_norm", "lr", "teacher_forcing"}
    assert expected | {"tokens_per_s", "epoch_time_s"} == set(logged[0][1])
    assert [row["teacher_forcing"] for _, row in logged] == [1.0, 0.75, 0.5, 0.5]
    best = min(range(4), key=lambda i: logged[i][1]["val_loss"])
    assert best == 1 and result.best_epoch == 2 and not result.stopped_early
    for key, value in states[best]["model"].items():  # the best weights are that epoch's ...
        assert torch.equal(result.best_state[key], value), key
    final = model.state_dict()  # ... not the last's, which training has moved on from
    assert all(torch.equal(states[-1]["model"][key], value) for key, value in final.items())
    assert any(not torch.equal(result.best_state[key], value) for key, value in final.items())
    assert logged[-1][1]["train_loss"] < logged[0][1]["train_loss"]


def test_fit_stops_early_after_patience(tiny_dataset):
    _, splits = tiny_dataset
    # A huge min_delta means no epoch after the first counts as an improvement.
    cfg = tiny_train_config(max_epochs=10, patience=2, min_delta=1e9)
    result = _fit(_model(), splits, cfg)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_fit_is_deterministic_on_the_cpu(tiny_dataset):
    _, splits = tiny_dataset
    cfg = tiny_train_config(max_epochs=2)
    runs = []
    for _ in range(2):
        model = _model()
        result = _fit(model, splits, cfg)
        timing_free = [
            {k: v for k, v in r.items() if k not in ("tokens_per_s", "epoch_time_s")} for r in result.history
        ]
        runs.append((timing_free, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for key, value in runs[0][1].items():
        assert torch.equal(value, runs[1][1][key]), key


def test_non_finite_loss_stops_before_saving_naming_epoch_and_step(tiny_dataset):
    _, splits = tiny_dataset
    model = _model()
    with torch.no_grad():
        model.decoder.out.bias.fill_(float("nan"))
    saved = []
    with pytest.raises(NonFiniteError, match="epoch 1, step 1: the loss or the gradient norm is not finite"):
        _fit(model, splits, tiny_train_config(), print, saved.append)
    assert saved == []


def test_a_killed_run_resumes_to_the_same_result(tiny_dataset):
    """Stop after epoch 2 (as a kill would, the state of epoch 2 saved), resume: same history and weights."""
    _, splits = tiny_dataset
    cfg = tiny_train_config(max_epochs=4, patience=4)
    full = _fit(_model(), splits, cfg)

    class Killed(Exception):
        pass

    states = []

    def save_then_die(state):
        states.append(state)
        if state["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        _fit(_model(), splits, cfg, save_state=save_then_die)
    resumed_model = _model(seed=99)  # different init: everything must come from the state
    resumed = _fit(resumed_model, splits, cfg, resume=states[-1])
    timing = ("tokens_per_s", "epoch_time_s")
    strip = [{k: v for k, v in row.items() if k not in timing} for row in full.history]
    assert [{k: v for k, v in row.items() if k not in timing} for row in resumed.history] == strip
    assert resumed.best_epoch == full.best_epoch
    for key, value in full.best_state.items():
        assert torch.equal(resumed.best_state[key], value), key


def test_checkpoint_round_trip_is_byte_reproducible(tmp_path, tiny_dataset):
    from seq2seq.checkpoint import load_checkpoint, save_checkpoint

    vocab, _ = tiny_dataset
    model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    for name in ("a.pt", "b.pt"):
        save_checkpoint(tmp_path / name, model, vocab, {"epoch": 3})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    loaded, loaded_vocab, payload = load_checkpoint(tmp_path / "a.pt")
    assert loaded_vocab == vocab and payload["epoch"] == 3 and loaded.cfg == model.cfg and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


def _trace_only(monkeypatch) -> None:
    """torch.compile as the stage calls it, with the "aot_eager" backend: TorchDynamo and AOTAutograd trace the
    whole graph that inductor would compile (and CUDA graphs replay), without inductor's minutes of C++ builds
    on this CPU (benchmarks/throughput.py --compile runs inductor itself)."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, **{**kwargs, "backend": "aot_eager"}))


def test_the_compiled_step_takes_a_teacher_forcing_tensor_with_eager_gradients(tiny_dataset, monkeypatch):
    """train.compile below teacher forcing 1: the ratio is a tensor inside one graph. With ratio 0 (every input is
    the model's prediction, so no coin can differ) the compiled step on fixed-width batches gives the eager
    step's loss and gradients on trimmed ones."""
    _trace_only(monkeypatch)
    _, data = tiny_dataset
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Seq2Seq(tiny_model_config(), len(tiny_dataset[0]), 0, 1, 2)
        loss_of = training_loss(model, tiny_train_config(compile=compiled), torch.device("cpu"))
        loss = loss_of(*data["train"].batch(torch.arange(32), trim=not compiled), 0.0)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, atol=1e-5, rtol=1e-5)
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-5, rtol=1e-4)


def test_fit_with_the_compiled_step_trains_like_eager(tiny_dataset, monkeypatch):
    """fit with train.compile: fixed-width batches (a last, smaller batch compiles once more) through one traced
    graph give the eager epochs' training and validation figures, at teacher forcing 1 (epoch 1) and 0 (epoch 2,
    the ratio as a tensor; at 0 no coin can differ)."""
    _trace_only(monkeypatch)
    vocab, data = tiny_dataset
    histories = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Seq2Seq(tiny_model_config(), len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
        cfg = tiny_train_config(max_epochs=2, tf_end=0.0, tf_decay_epochs=1, compile=compiled)
        histories.append(_fit(model, data, cfg).history)
    eager, compiled = histories
    assert [row["teacher_forcing"] for row in compiled] == [1.0, 0.0]
    for eager_row, compiled_row in zip(eager, compiled, strict=True):
        for key in ("train_loss", "val_loss", "val_token_acc", "val_exact_match", "grad_norm"):
            assert compiled_row[key] == pytest.approx(eager_row[key], rel=1e-4, abs=1e-6), key


def test_compile_with_several_processes_is_refused():
    with pytest.raises(ConfigError, match="compile: is not supported with nproc > 1"):
        tiny_train_config(compile=True, nproc=2)


def test_more_processes_than_training_examples_is_refused_before_training(tiny_dataset):
    """Under data parallelism every batch splits across the processes; with fewer examples than processes none
    can, and the epoch would end dividing by zero tokens. Refused, naming the param, before DDP starts."""
    from seq2seq.data import Encoded
    from seq2seq.distributed import Context

    _, splits = tiny_dataset
    three = Encoded(*(t[:3] for t in (splits["train"].src, splits["train"].src_len, splits["train"].tgt,
                                       splits["train"].tgt_len)))  # fmt: skip
    with pytest.raises(ConfigError, match=r"train\.nproc: is 4 but the training split holds 3 examples"):
        _fit(_model(), {**splits, "train": three}, tiny_train_config(nproc=4), ctx=Context(rank=0, world=4))
