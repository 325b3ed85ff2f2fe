"""Generate stage: params.yaml [data] -> the dataset folder (splits as parquet + vocab.json), data metrics and
the source-length histogram (a DVC plot)."""

from __future__ import annotations

from pathlib import Path

import click

from seq2seq.config import ConfigError, ParamsError
from seq2seq.data import build_vocab, generate_splits, length_histogram, write_dataset
from seq2seq.files import atomic_dir, atomic_write, write_json
from seq2seq.params import load_params
from stages.common import output_path, params_option, stage


@stage
@params_option
@output_path("--out", "out_dir", directory=True)
@output_path("--metrics", "metrics_path")
@output_path("--lengths", "lengths_path")
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path), help="The pairs file data.task file reads.")
def main(params_path: Path, out_dir: Path, metrics_path: Path, lengths_path: Path, pairs_path: Path | None) -> None:
    params = load_params(params_path)
    cfg = params.data
    try:
        frames, leakage = generate_splits(cfg, pairs_path, (params.export.max_src_len, params.export.max_tgt_len))
    except ConfigError as err:  # data params that cannot make the splits asked for
        raise ParamsError(f"{params_path}: {err}") from None
    vocab = build_vocab(cfg, frames)
    atomic_dir(out_dir, lambda tmp: write_dataset(tmp, frames, vocab))
    counts = {f"n_{split}": len(frame) for split, frame in frames.items()}
    write_json(metrics_path, {"vocab_size": len(vocab), **counts, **leakage})
    atomic_write(lengths_path, lambda tmp: length_histogram(frames).to_csv(tmp, index=False))
    click.echo(f"wrote {sum(len(f) for f in frames.values())} examples to {out_dir}; overlap with train: {leakage}")


if __name__ == "__main__":
    main()
