"""params.yaml -> frozen config dataclasses, strictly: the first bad key is named with the file it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from seq2seq.config import ConfigError, ParamsError, from_mapping, require
from seq2seq.data import DataConfig
from seq2seq.evaluation import EvaluateConfig
from seq2seq.export import ExportConfig
from seq2seq.gate import GateConfig
from seq2seq.model import ModelConfig
from seq2seq.train import TrainConfig


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    export: ExportConfig
    gate: GateConfig

    def flat(self, *sections: str) -> dict[str, Any]:
        """Dotted keys as in params.yaml (`model.hidden_dim`), for MLflow params; all sections by default."""
        names = sections or tuple(SECTIONS)
        return {f"{name}.{k}": v for name in names for k, v in asdict(getattr(self, name)).items()}


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "export": ExportConfig,
    "gate": GateConfig,
}


def parse_params(raw: Any) -> Params:
    require(isinstance(raw, Mapping), "params", f"the file must hold a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    require(not unknown, unknown[0] if unknown else "", f"unknown section (known: {', '.join(SECTIONS)})")
    missing = [s for s in SECTIONS if s not in raw]
    require(not missing, missing[0] if missing else "", "missing section")
    params = Params(**{name: from_mapping(cls, raw[name], name) for name, cls in SECTIONS.items()})
    src, tgt = params.export.max_src_len, params.export.max_tgt_len
    # Every task's target is at most as long as its source (add: the sum is shorter than "a + b"), plus <eos>;
    # under that, the exported decoder would cut answers to the longest inputs off without a word.
    require(tgt > src, "export.max_tgt_len", f"must be > max_src_len ({src}), so answers fit with <eos>; got {tgt}")
    return params


def read_yaml(text: str) -> Any:
    """YAML 1.2, as DVC reads params.yaml (`dvc params diff`, `dvc exp show`, the lock): `lr: 1e-3` is the float
    0.001 there, where a YAML 1.1 reader (PyYAML) would hand the stage the string '1e-3'."""
    from ruamel.yaml import YAML  # here: the library imports without it (the GPU machine's image has only PyYAML)

    return YAML(typ="safe", pure=True).load(text)


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; raises ParamsError naming the file and the key."""
    from ruamel.yaml import YAMLError

    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except OSError as err:
        raise ParamsError(f"{path}: cannot read: {err.strerror}") from None
    except YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        return parse_params(raw)
    except ConfigError as err:
        raise ParamsError(f"{path}: {err}") from None
