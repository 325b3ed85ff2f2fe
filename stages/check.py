"""Check stage: all of params.yaml validated, and its sizes against this machine, before any other stage runs.

DVC deletes a stage's outputs before it runs the stage, so a typo caught by the stage itself would cost its model,
metrics and training state. Every other stage depends on the marker this stage writes: a bad value stops `dvc
repro` (and `dvc exp run -S`) here, with every output as it was. The marker's bytes never change, so a valid edit
reruns only the stages whose own params changed. With `data.task: file` it reads the pairs file as generate will:
a missing or malformed file, or one too small for the splits, stops the pipeline here too.
"""

from __future__ import annotations

from pathlib import Path

import click

from seq2seq.files import atomic_write
from seq2seq.sizes import load_checked
from stages.common import output_path, params_option, stage

MARKER = "params.yaml: every section valid, its sizes within this machine's memory\n"


@stage
@params_option
@output_path("--out", "out_path")
@click.option("--pairs", "pairs_path", type=click.Path(path_type=Path), help="The pairs file data.task file reads.")
def main(params_path: Path, out_path: Path, pairs_path: Path | None) -> None:
    params = load_checked(params_path)
    if params.data.task == "file":
        from seq2seq.pairs import generate_splits

        generate_splits(params.data, pairs_path, (params.export.max_src_len, params.export.max_tgt_len))
    atomic_write(out_path, lambda tmp: tmp.write_text(MARKER))


if __name__ == "__main__":
    main()
