"""Experiment configuration: frozen-by-convention dataclasses with dotted ``key=value`` overrides."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DTYPES", "RUN_OPTIONS", "ConfigError", "ExperimentConfig", "ModelConfig", "TrainConfig", "fit_options"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: options of :func:`neuralsvd.fit` that the runner sets itself (not configuration)
RUN_OPTIONS = ("checkpoint_dir", "resume", "progress", "callback", "distributed")


class ConfigError(ValueError):
    """A configuration key or value is invalid (unknown key, wrong type, or a differing resume)."""


@dataclass
class ModelConfig:
    """The network: ``kind`` is ``"parallel_mlp"`` (one MLP per mode), ``"mlp"`` (shared trunk) or
    ``"separable"`` (sums of ``rank`` products of 1D MLPs, :class:`~neuralsvd.models.separable.SeparableMLP`; it
    uses ``hidden``, ``activation``, ``box`` and ``rank`` only)."""

    kind: str = "parallel_mlp"
    hidden: tuple = (128, 128, 128)
    activation: str = "softplus"
    fourier_features: int = 0
    fourier_scale: float = 1.0
    envelope: bool = False
    envelope_scale: Any = 10.0  # one number, one per mode, or "spread" (presets.spread_envelope_scales)
    box: Any = None
    radial: bool = False
    rank: int = 1


@dataclass
class TrainConfig:
    """Options of :func:`neuralsvd.fit` (see there), by the same names; :func:`fit_options` turns them
    into its keyword arguments. ``dtype`` is a name (``"float32"``, ``"float64"``). ``batch_size="auto"`` is
    chosen by the problem's ``prepare`` where it has a rule (``hydrogen``: :func:`.presets.hydrogen_batch_size`)."""

    steps: int = 10_000
    batch_size: Any = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup: int = 0
    ema_decay: Any = None
    dtype: str = "float32"
    log_every: int = 100
    checkpoint_every: int = 1000
    eval_batches: int = 64
    readout: str = "rayleigh"
    compile: bool = False
    eval_batch_size: Any = None
    max_rollbacks: int = 3
    lr_backoff: float = 0.5
    revive: bool = True
    rescue: bool = True
    init_ratio: Any = 1.0
    warm_start: Any = 1000


@dataclass
class ExperimentConfig:
    """A whole run: problem, method, operator parameters, model and training settings."""

    problem: str
    method: str = "neuralsvd-seq"
    modes: int = 9
    seed: int = 0
    device: str = "cpu"
    operator: dict = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["hidden"] = list(self.model.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentConfig:
        d = dict(d)
        model = ModelConfig(**d.pop("model", {}))
        model.hidden = tuple(model.hidden)
        return cls(model=model, train=TrainConfig(**d.pop("train", {})), **d)

    def with_overrides(self, overrides: list[str]) -> ExperimentConfig:
        """Apply ``key=value`` strings. Keys are dotted (``train.lr``, ``model.hidden``,
        ``operator.sampler_std``; ``data.path`` is another name for ``operator.path``) or a bare field name
        when it is unique (``lr``). Values are Python
        literals (``1e-3``, ``(64, 64)``, ``True``, ``None``) or bare strings (``rmsprop``)."""
        cfg = ExperimentConfig.from_dict(self.to_dict())
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
            key, raw = item.split("=", 1)
            section, name = self._resolve(cfg, key.strip())
            value = _parse(raw.strip())
            if section == "operator":
                cfg.operator[name] = value
                continue
            target = cfg if section is None else getattr(cfg, section)
            if _annotation(target, name) != "Any":  # fields typed Any take any literal (checked where used)
                value = _coerce(f"{key}", getattr(target, name), value)
            setattr(target, name, value)
        return cfg

    @staticmethod
    def _resolve(cfg: ExperimentConfig, key: str) -> tuple[str | None, str]:
        top = {f.name for f in dataclasses.fields(cfg)} - {"operator", "model", "train"}
        sections = {"model": {f.name for f in dataclasses.fields(cfg.model)},
                    "train": {f.name for f in dataclasses.fields(cfg.train)},
                    "operator": set(cfg.operator)}
        if "." in key:
            section, name = key.split(".", 1)
            section = "operator" if section == "data" else section  # data.KEY: the data of data-defined operators
            if section not in sections:
                raise ConfigError(f"unknown config section {section!r}; valid: {sorted(sections)}")
            if name not in sections[section]:
                raise ConfigError(f"unknown key {key!r}; valid {section} keys: {sorted(sections[section])}")
            return section, name
        if key in top:
            return None, key
        hits = [s for s, names in sections.items() if key in names]
        if len(hits) == 1:
            return hits[0], key
        if len(hits) > 1:
            raise ConfigError(f"key {key!r} is ambiguous; write one of {[f'{s}.{key}' for s in hits]}")
        valid = sorted(top) + [f"{s}.{n}" for s, names in sections.items() for n in sorted(names)]
        raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")


def _annotation(obj: Any, name: str) -> str:
    """The declared type of dataclass field ``name`` as written (annotations are strings here)."""
    return str(next(f.type for f in dataclasses.fields(obj) if f.name == name))


def _parse(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Match ``value`` to the type of the field's current value (ints may become floats, lists tuples)."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} expects True or False, got {value!r}")
        return value
    if isinstance(current, int) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        return float(value)
    if isinstance(current, tuple):
        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        if not isinstance(value, (tuple, list)):
            raise ConfigError(f"{key} expects a tuple such as (128, 128), got {value!r}")
        return tuple(value)
    if isinstance(current, str) and not isinstance(value, str):
        raise ConfigError(f"{key} expects a string, got {value!r}")
    return value


def fit_options(config: ExperimentConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`neuralsvd.fit` that ``config`` sets: every :class:`TrainConfig`
    field by name (``dtype`` resolved to a torch dtype) plus the top-level ``seed`` and ``device``. The
    runner adds :data:`RUN_OPTIONS`."""
    options = dataclasses.asdict(config.train)
    batch = options["batch_size"]
    if batch == "auto":
        raise ConfigError(f"train.batch_size='auto' has no rule for problem {config.problem!r} (the hydrogen "
                          "problem's prepare step chooses one); set a number")
    if isinstance(batch, bool) or not isinstance(batch, int):
        raise ConfigError(f"train.batch_size expects an integer, got {batch!r}")
    if options["dtype"] not in DTYPES:
        raise ConfigError(f"unknown dtype {options['dtype']!r}; valid: {', '.join(DTYPES)}")
    options["dtype"] = DTYPES[options["dtype"]]
    return {**options, "seed": config.seed, "device": config.device}
