"""The keeper: a process per stage that holds the stage's MLflow run, logs for it, and ends it.

Why a process: importing MLflow and opening the store cost about 4 s of Python, over 2% of a default-profile
train stage when the training process does it (benchmarks/logging_overhead.py measures both designs); the keeper
does it on another core while the stage imports torch and loads its data. It is also the one guard of the run's
final status: the stage ends the run (FINISHED, FAILED, KILLED: `ending`), and if its connection closes
without that (SIGKILL, the OOM killer) the keeper marks the run KILLED, unless a rerun owns it by then. Its own
process group: a signal to the stage's group (DVC stopping its stage, `kill -9 -PGID`) leaves it alive for that.

Calls are requests pickled over multiprocessing's Connection and carried out in order (ANSWERED says which the
stage waits for).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any

from seq2seq.tracking.runs import Run, open_run
from seq2seq.tracking.store import TrackingError, cause, open_store, resolve_tracking_uri, sqlite_file

CALLS = (
    "log_params",
    "log_metrics",
    "set_tags",
    "log_text",
    "log_dataset",
    "log_figure",
    "log_table",
    "monitor",
    "log_model",
    "end",
)
# Calls the stage waits for: the others' errors come at the next wait. log_model reads a folder the stage may delete
# as soon as the call returns. log_metrics (one log_batch an epoch, a few milliseconds): an
# epoch's metrics are in the store before its training state is saved, so a store that stops or locks mid-training
# stops the stage at that epoch, within MLflow's bounded retries (store.py), and the rerun resumes there in the
# same run, logging every epoch once.
ANSWERED = ("log_metrics", "log_model", "end")


class Keeper:
    """The stage's side: start it first thing (`with Keeper() as keeper:`), then `with keeper.run(...) as run:`."""

    def __init__(self, env: Mapping[str, str] = os.environ) -> None:
        ours, theirs = multiprocessing.Pipe()
        # The store is resolved from `env` alone; this process's environment gives the rest.
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))} | dict(env)
        serve = "from seq2seq.tracking.keeper import serve; serve()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", serve, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # stdout is the stage's (DVC reads it); errors come back as replies
            env=child_env,
            # Its own process group, not its own session: with the kernel's autogroup scheduling a session is
            # scheduled as a group of its own, against which nice 19 means nothing (+8.4% wall time, measured).
            process_group=0,
        )
        theirs.close()
        self.conn, self.asked = ours, False

    def __enter__(self) -> Keeper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 30.0) -> None:
        """Let the keeper go: it has ended its run by now, or was never asked for one. Then a stage that failed
        early (bad params or input) need not wait for MLflow's import: SIGTERM stops it there; one that is opening
        the store by then finishes it (`_serve`) rather than dying in the middle of a write."""
        if not self.asked:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
        self.conn.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @contextlib.contextmanager
    def run(self, stage: str, **how: Any) -> Iterator[RemoteRun]:
        """`runs.open_run(stage, **how)` in the keeper, ended by `ending` when the block ends."""
        self.asked = True
        opened = RemoteRun(self.conn, dict(stage=stage, **how))
        with ending(opened):
            yield opened


class RemoteRun:
    """A `runs.Run` held by the keeper: the same calls (CALLS), carried out there in order.

    The stage does not wait for the open, nor for the params, tags and texts logged with it: it would otherwise
    wait for MLflow's import (the run opens while the stage loads its data). A call's error is raised at the next
    call that waits for its answer (`run_id`, ANSWERED) or at `sync()`, which the stage calls before it writes its
    outputs."""

    def __init__(self, conn: Connection, how: dict[str, Any]) -> None:
        self._conn, self._pending, self._opened = conn, 0, None
        self._call("open", how)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            self._conn.send((name, args, kwargs))
        except OSError:  # the keeper is gone: what it said before going explains why
            self.sync()
            raise TrackingError("MLflow: the keeper process exited") from None
        self._pending += 1
        return self.sync() if name in ANSWERED else None

    def sync(self) -> Any:
        """Wait for every answer still due (the open's first); raise the first error, else return the last value."""
        error, last = None, None
        while self._pending:
            try:
                kind, value = self._conn.recv()
            except (OSError, EOFError):
                kind, value, self._pending = "error", TrackingError("MLflow: the keeper process exited"), 1
            self._pending -= 1
            if self._opened is None:
                self._opened = value if kind == "ok" else ()
            error, last = (error or value, last) if kind == "error" else (error, value)
        if error:
            raise error
        return last

    def _ids(self) -> tuple[str, str]:
        self.sync()
        if not self._opened:  # its error was raised before
            raise TrackingError("MLflow: the run did not open")
        return self._opened

    @property
    def run_id(self) -> str:
        return self._ids()[0]

    @property
    def experiment_id(self) -> str:
        return self._ids()[1]

    def __getattr__(self, name: str) -> Any:
        if name not in CALLS:
            raise AttributeError(name)
        return functools.partial(self._call, name)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the run is closed as KILLED instead of left RUNNING."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


@contextlib.contextmanager
def ending(run: Any) -> Iterator[Any]:
    """Ends `run` when the block ends: FINISHED, FAILED (an exception) or KILLED (Ctrl-C, SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield run
        run.sync()  # a call's error, raised here, ends the run FAILED rather than FINISHED
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):  # the interruption is what the stage reports, not a logging error
            run.end("KILLED")
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # likewise the failure
            run.end("FAILED")
        raise
    else:
        run.end("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warm_up(env: Mapping[str, str]) -> tuple | None:
    """Open a SQLite store that exists already, before the stage asks for its run. A store that does not exist
    yet is left for the run to create: a stage that stops before it logs leaves none behind."""
    uri = resolve_tracking_uri(env)
    if (db := sqlite_file(uri)) is not None and db.exists():
        with contextlib.suppress(Exception):  # whatever fails here fails again in open_run, where it is reported
            return open_store(env)
    return None


def _error(err: Exception, name: str) -> TrackingError:
    """The error sent back to the stage: one line naming the store and the call."""
    uri = resolve_tracking_uri()
    return err if isinstance(err, TrackingError) else TrackingError(f"MLflow store {uri}: {name}: {cause(err)}")


def serve() -> None:
    """The keeper process (argv: the file descriptor of its Connection to the stage). It exits without tearing
    MLflow's modules down, which only made the stage wait for it (about half a second)."""
    _serve(Connection(int(sys.argv[1])))
    sys.stderr.flush()
    os._exit(0)


def _serve(conn: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the stage, which says how to end the run
    # Background work: on cores that training keeps busy, it runs in their idle moments instead of taking turns
    # with the training threads (when the stage waits on it, it has a core).
    os.nice(19)
    # What the stage's first calls would import: the client, and the artifact store log_text uses. Nothing is
    # written until the store opens: a SIGTERM (Keeper.close, no run asked) stops the import, not the opening.
    import mlflow.store.artifact.local_artifact_repo  # noqa: F401
    from mlflow.tracking import MlflowClient  # noqa: F401

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = _warm_up(os.environ)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _, (how,), _ = conn.recv()
    except EOFError:  # the stage stopped before it needed a run
        return
    try:
        run: Run = open_run(**how, store=store)
    except Exception as err:
        conn.send(("error", _error(err, "open")))
        return
    try:
        conn.send(("ok", (run.run_id, run.experiment_id)))
        while True:
            name, args, kwargs = conn.recv()
            try:
                answer = ("ok", getattr(run, name)(*args, **kwargs))
            except Exception as err:
                answer = ("error", _error(err, name))
            conn.send(answer)
            if name == "end":
                return
    except (EOFError, OSError):  # the stage died without ending its run
        with contextlib.suppress(Exception):
            run.end_if_owned()
