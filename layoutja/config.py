"""Training configuration: plain dataclasses filled from the YAML recipes in `train/`.

A recipe is a flat YAML mapping of `TrainConfig` fields (plus a `model` mapping for models built
from scratch); `--key value` on the command line overrides any field, parsed as YAML
(`--lr 1e-4`, `--mixed-precision bf16`, `--model.hidden_size 128`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from layoutja.errors import UserError

OBJECTIVES = ("mvlm", "electra", "token-classification")
# What `layoutja finetune` starts from before a recipe (the TrainConfig defaults are the
# published pretraining recipe's): train/finetune-shinra.yaml spells the same values out.
FINETUNE_DEFAULTS = {
    "objective": "token-classification",
    "epochs": 5,
    "global_batch_size": 32,
    "per_device_batch_size": 32,
    "warmup_steps": 500,
    "weight_decay": 0.01,
    "log_every": 50,
    "save_every": 2000,
    "keep_checkpoints": 2,
}


@dataclass
class TrainConfig:
    objective: str = "mvlm"  # mvlm | electra (layoutja pretrain) | token-classification (finetune)
    # Optimization (the published recipe: Adam, lr 5e-5, 1,000 warmup steps, linear decay).
    max_steps: int = 100_000
    global_batch_size: int = 256  # = per-device batch × devices × accumulation, on any setup
    per_device_batch_size: int = 32
    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 1000
    max_grad_norm: float = 1.0
    mixed_precision: str = "fp16"  # fp16 | bf16 | no (CPU runs without it)
    # Data
    max_length: int = 512
    margin: int = 128
    mask_probability: float = 0.15
    seed: int = 42
    data_workers: int = 1  # background processes preparing batches (0: in the training loop)
    # Fine-tuning: whole passes over the training pages (max_steps follows from them when > 0),
    # and the share of pages held out for the dev F1 (split by page id, deterministically).
    epochs: int = 0
    dev_fraction: float = 0.1
    # ELECTRA: with boxes (layout-aware) or text-only; the generator's width is the
    # discriminator's divided by generator_factor; loss = generator MLM + weight × BCE.
    layout: bool = True
    generator_factor: int = 3
    discriminator_weight: float = 50.0
    # Bookkeeping
    log_every: int = 10
    save_every: int = 1000
    keep_checkpoints: int = 3
    # Architecture for a model built from scratch (`--tokenizer` instead of `--init`).
    model: dict = field(default_factory=dict)


def _parse_value(key: str, text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"--{key}: cannot parse {text!r}") from None


def load_config(
    path: str | Path | None,
    overrides: dict[str, str] | None = None,
    defaults: dict | None = None,
) -> TrainConfig:
    """A TrainConfig from `defaults`, then a YAML recipe, then `--key value` overrides."""
    values: dict = {}
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: a recipe is a mapping of settings")
    values = {**(defaults or {}), **values}
    names = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for key, text in (overrides or {}).items():
        key = key.replace("-", "_")
        if key.startswith("model."):
            values.setdefault("model", {})[key[len("model.") :]] = _parse_value(key, text)
        else:
            values[key] = _parse_value(key, text)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(
            f"{path or 'settings'}: unknown setting(s) {unknown}; known: {sorted(names)}"
        )
    config = TrainConfig(**values)
    for name, f in names.items():
        if f.type in ("int", "float"):  # YAML reads 5e-5 (no dot) as a string
            try:
                setattr(config, name, (float if f.type == "float" else int)(getattr(config, name)))
            except (TypeError, ValueError):
                raise UserError(f"{path or 'settings'}: {name} must be a number") from None
    if config.mixed_precision is False:  # YAML reads a bare `no` as false
        config.mixed_precision = "no"
    if config.mixed_precision not in ("fp16", "bf16", "no"):
        raise UserError(f"mixed_precision must be fp16, bf16 or no, not {config.mixed_precision!r}")
    if config.objective not in OBJECTIVES:
        raise UserError(f"objective must be one of {OBJECTIVES}, not {config.objective!r}")
    if not isinstance(config.layout, bool):
        raise UserError(f"layout must be true or false, not {config.layout!r}")
    if config.generator_factor < 1:
        raise UserError("generator_factor must be at least 1")
    if config.keep_checkpoints < 1 or config.log_every < 1 or config.save_every < 1:
        raise UserError("keep_checkpoints, log_every and save_every must be at least 1")
    return config
