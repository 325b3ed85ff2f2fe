"""Sizes a machine cannot hold, refused before any stage runs: the model's training memory against the device's, the
generated data against RAM. Estimates that refuse the impossible up front (a params.yaml typo of a few zeros)
instead of a memory traceback after an epoch, or a generate that never finishes; they do not promise a fit."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from seq2seq.config import ConfigError, ParamsError
from seq2seq.data import DataConfig
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.params import Params, load_params
from seq2seq.vocab import SPECIALS

GIB = 2**30
# Measured peak of `generate_splits` per example (400 B) plus its strings (16 B a character, leaving room for the
# DataFrames and the train set's dedup set): 916 B against this estimate's 2.3 KiB at max_len 12, 1000 symbols.
_EXAMPLE_BYTES, _CHAR_BYTES = 400, 16


def ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_memory(device: str) -> tuple[int, str]:
    """(bytes, what they are) of the memory training will use: the GPU's for CUDA, else this machine's RAM."""
    if device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, "GPU memory"
    return ram(), "RAM"


class _NoInit(TorchFunctionMode):
    """torch.nn.init's fills skipped: on the meta device there are no values to fill, and the meta kernel of
    `normal_` imports torch._dynamo, 1.1-1.5 s of CPU, a third of the check stage (measured)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def parameter_counts(model: ModelConfig, vocab: int) -> dict[str, int]:
    """The model's parameters, name -> count, without allocating them (a size check must not need the memory)."""
    with torch.device("meta"), _NoInit():
        net = Seq2Seq(model, vocab, 0, 1, 2)
    return {name: p.numel() for name, p in net.named_parameters()}


def check_sizes(data: DataConfig, model: ModelConfig, batch_size: int, device: str) -> None:
    """ConfigError naming the key whose size needs more memory than the machine has."""
    memory, kind = machine_memory(device)
    vocab = data.num_symbols + len(SPECIALS) + (data.task == "add")
    counts = parameter_counts(model, vocab)
    n_params = sum(counts.values())
    by_vocab = sum(n for name, n in counts.items() if "embedding" in name or name.startswith("decoder.out"))
    src = 2 * data.max_len + 1 if data.task == "add" else data.max_len  # source tokens; targets one more (<eos>)
    E, H, L = model.emb_dim, model.hidden_dim, model.num_layers
    # Activations kept for the backward pass, floats per example: LSTM gates and states per token and layer, the
    # attention's (S, H) energy per target step, and the logits with their softmax and gradient.
    floats = src * (E + 6 * H * L) + (src + 1) * (E + 6 * H * L + 2 * src * H + 3 * vocab)
    # fp32 weights, gradients and Adam's two moments, plus one batch's activations.
    train_bytes = 4 * (4 * n_params + batch_size * floats)
    if train_bytes > memory:
        key = "data.num_symbols" if by_vocab > n_params / 2 else ("model.hidden_dim" if H >= E else "model.emb_dim")
        raise ConfigError(
            key,
            f"a model of {n_params:.3g} parameters ({vocab} tokens, emb_dim {E}, hidden_dim {H}, {L} layers) needs "
            f"about {train_bytes / GIB:,.1f} GiB to train at batch size {batch_size}; this machine has "
            f"{memory / GIB:,.1f} GiB of {kind}",
        )
    sizes = {"n_train": data.n_train, "n_val": data.n_val, "n_test": data.n_test, "n_test_long": data.n_test_long}
    chars = 2 * data.long_max_len * (len(str(data.num_symbols)) + 1)  # both sides of the longest example
    data_bytes = sum(sizes.values()) * (_EXAMPLE_BYTES + _CHAR_BYTES * chars)
    if data_bytes > ram():
        key = max(sizes, key=sizes.get)
        raise ConfigError(
            f"data.{key}",
            f"{sum(sizes.values()):,} examples need about {data_bytes / GIB:,.1f} GiB to generate; this machine has "
            f"{ram() / GIB:,.1f} GiB of RAM",
        )


def load_checked(path: Path) -> Params:
    """`load_params(path)`, its sizes checked against this machine too; ParamsError naming the file and key."""
    params = load_params(path)
    try:
        check_sizes(params.data, params.model, params.train.batch_size, params.train.device)
    except ConfigError as err:
        raise ParamsError(f"{path}: {err}") from None
    return params
