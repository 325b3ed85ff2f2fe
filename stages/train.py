"""Train stage: data/ + params [data, model, train, evaluate.max_extra_len] -> the best checkpoint, its metrics,
timing and per-epoch history, the MLflow run reference, and the training state saved every epoch (a killed run
resumes in the same MLflow run). With `train.nproc > 1` it runs itself as torchrun workers; rank 0 writes and logs."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import click

from seq2seq import tracking
from stages.common import command_line, input_path, output_path, params_option, sectioned, stage

SECTIONS = ("data", "model", "train")


@stage
@params_option
@input_path("--data", "data_dir", directory=True)
@output_path("--checkpoint", "checkpoint_path")
@output_path("--state", "state_path")
@output_path("--run-ref", "run_ref_path")
@output_path("--metrics", "metrics_path")
@output_path("--timing", "timing_path")
@output_path("--history", "history_path")
def main(params_path: Path, data_dir: Path, **out: Path) -> None:
    # The keeper starts before this process imports torch (the params and the library do): MLflow's imports and
    # the store's opening then overlap this start-up instead of the training. Under torchrun, rank 0 alone logs.
    with tracking.Keeper() if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext() as keeper:
        train(params_path, data_dir, keeper, **out)


def train(params_path: Path, data_dir: Path, keeper: tracking.Keeper | None, **out: Path) -> None:
    import torch

    from seq2seq import distributed
    from seq2seq.checkpoint import code_files, fingerprint, resumable, save_train_state, save_training
    from seq2seq.data import dataset_digest, load_split, read_vocab
    from seq2seq.model import Seq2Seq
    from seq2seq.params import load_params
    from seq2seq.train import fit, resolve_device

    params = load_params(params_path)
    device = resolve_device(params.train.device)
    if params.train.nproc > 1 and not distributed.launched():
        keeper.close()  # the workers log, not this launcher
        sys.exit(distributed.launch(params.train.nproc, command_line("stages.train"), device))
    vocab = read_vocab(data_dir)
    train_set, val_set = load_split(data_dir, "train", vocab), load_split(data_dir, "val", vocab)
    digest = dataset_digest(data_dir)
    expected = fingerprint(params.flat(*SECTIONS), digest, code_files(Path(__file__)), torch.get_num_threads())
    state, note = resumable(out["state_path"], expected)
    torch.manual_seed(params.train.seed)  # the weight init is part of the seeded run
    model = Seq2Seq(params.model, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)
    with distributed.process_group(device, params.train.nproc) as (ctx, device):
        model, options = model.to(device), dict(max_extra_len=params.evaluate.max_extra_len, resume=state, ctx=ctx)
        if not ctx.is_main:  # another process of the data-parallel group: trains its share, writes nothing
            fit(model, train_set, val_set, params.train, device, log=lambda epoch, row: None, **options)
            return
        where = {"device": str(device), "processes": ctx.world}
        with keeper.run("train", resume=state and (state["run_id"], out["state_path"])) as run:
            if state:  # the same run goes on: it must be there before any training
                run.set_tags({"resumed_after_epoch": state["epoch"]})
                run.sync()
            else:
                run.log_params(params.flat(*SECTIONS))
                # The thread count is part of what makes a CPU run byte-reproducible: another sums in another order.
                run.set_tags({"data_digest": digest, "torch_threads": torch.get_num_threads()} | where)
                run.log_text(params_path.read_text(), "params.yaml")
                run.log_dataset(params.data.task, digest, data_dir.resolve(), ("train", "val"))
            if note:  # said once the run is open: resuming needs it
                click.echo(note, err=True)

            # run_id waits for the answers due; each epoch's log_metrics then waits for its own (keeper.ANSWERED).
            checks = {"fingerprint": expected, "run_id": run.run_id}
            save_state = functools.partial(save_train_state, out["state_path"], **checks)

            def log(epoch: int, row: dict[str, float]) -> None:
                run.log_metrics(sectioned(row), step=epoch)
                click.echo(f"epoch {epoch:3d}  " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), err=True)

            run.monitor(params.train.system_metrics)
            with distributed.out_of_memory_explained(device, params.train.batch_size):
                result = fit(model, train_set, val_set, params.train, device, log=log, save_state=save_state, **options)
            run.sync()  # a logging failure stops the stage here, before it writes any output
            tracking.write_reference(run, out["run_ref_path"])
            save_state(result.last_state | {"complete": True})
            peak = distributed.peak_memory(device)
            save_training(result, model, vocab, out, where | peak, train_set.src_len)
            # The summary a variant is compared on; the best epoch's values are in the curves, at its step.
            run.log_metrics(sectioned(result.counts() | peak, "summary"))
    click.echo(f"best epoch {result.best_epoch} (by val loss): val loss {result.best_metrics()['val_loss']:.4g}")


if __name__ == "__main__":
    main()
