"""Training recipes: sectioned dataclasses, filled from the YAML files in `train/`.

A recipe has an `objective` and sections; the defaults below are the published MVLM recipe
(train/mvlm-base.yaml spells them out) and are the only defaults there are:

    objective: mvlm | electra | token-classification
    model:      the architecture of a model built from scratch (a transformers config mapping)
    optimizer:  Adam(W) settings, gradient clipping
    schedule:   steps or epochs, warmup, batch sizes, precision, seed
    data:       window length and overlap, masking, background batch workers
    checkpoint: how often to log and save, how many checkpoints to keep
    electra:    ELECTRA's own settings (layout-aware or not, generator size, loss weight)
    finetune:   SHINRA fine-tuning's own settings (dev split, text-only baseline, overlapping
                annotations, gap bridging)

The command line is derived from the same dataclasses (`add_recipe_arguments`): every setting a
command reads is `--section.key VALUE` (values parsed as YAML, e.g. `--optimizer.learning_rate
1e-4`, `--model.hidden_size 128`); `pretrain --help` and `finetune --help` list only their own,
and an unknown key is refused with the valid names.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from layoutja.common import UserError, read_yaml_mapping

OBJECTIVES = ("mvlm", "electra", "token-classification")


def setting(default: Any, help: str, only: str | None = None) -> Any:
    """A recipe field with its `--help` text; `only`: the one command that reads it (pretrain or
    finetune), so the other's `--help` does not offer it."""
    return field(default=default, metadata={"help": help, "only": only})


@dataclass
class Optimizer:
    learning_rate: float = setting(5e-5, "peak learning rate")
    adam_beta1: float = setting(0.9, "Adam beta1")
    adam_beta2: float = setting(0.999, "Adam beta2")
    adam_epsilon: float = setting(1e-8, "Adam epsilon")
    weight_decay: float = setting(0.0, "decoupled weight decay (0: plain Adam)")
    max_grad_norm: float = setting(1.0, "gradient clipping norm (0: off)")


@dataclass
class Schedule:
    max_steps: int = setting(100_000, "optimizer steps (fine-tuning: used when epochs is 0)")
    epochs: int = setting(0, "passes over the training windows (0: max_steps)", "finetune")
    warmup_steps: int = setting(1000, "linear warmup steps, then linear decay to 0")
    global_batch_size: int = setting(256, "= per-device batch × devices × accumulation")
    per_device_batch_size: int = setting(32, "micro-batch size on one device")
    mixed_precision: str = setting("fp16", "fp16 | bf16 | no (CPU runs without it)")
    compile: bool = setting(
        False,
        "torch.compile the transformer encoders (the embeddings "
        "and the masked-only heads stay eager)",
    )
    seed: int = setting(
        42, "seed of model initialization, data order, masking, dropout and the dev split"
    )
    timeout_minutes: float = setting(
        60.0,
        "how long a process waits for the others (an evaluation, a checkpoint) before the "
        "job fails",
    )


@dataclass
class Data:
    max_length: int = setting(512, "window length, [CLS] and [SEP] included")
    margin: int = setting(128, "overlap of consecutive windows")
    mask_probability: float = setting(0.15, "share of tokens masked", "pretrain")
    data_workers: int = setting(
        1, "background processes preparing batches (0: in the loop)", "pretrain"
    )
    eval_pages: int = setting(
        1000,
        "pages held out (never trained on) for the evaluation every checkpoint.eval_every steps "
        "(0: none)",
        "pretrain",
    )
    group_by_length: bool = setting(
        False,
        "windows of similar length in one micro-batch (less padding; the same windows per epoch)",
        "pretrain",
    )
    pin_memory: bool = setting(
        True, "on CUDA: batches in pinned memory, copied asynchronously", "pretrain"
    )
    shuffle_parts: int = setting(
        64,
        "Parquet parts whose windows are shuffled together (each process holds about this many "
        "÷ processes)",
        "pretrain",
    )


@dataclass
class Checkpoint:
    log_every: int = setting(50, "steps between metrics lines")
    save_every: int = setting(2000, "steps between checkpoints")
    keep_checkpoints: int = setting(3, "checkpoints kept (the latest ones)")
    eval_every: int = setting(2000, "steps between held-out evaluations", "pretrain")


@dataclass
class Electra:
    layout: bool = setting(True, "with boxes (layout-aware) or text-only")
    generator_factor: int = setting(3, "the generator's width is the discriminator's / this")
    discriminator_weight: float = setting(50.0, "loss = generator MLM + this × BCE")


@dataclass
class Finetune:
    dev_fraction: float = setting(0.1, "share of pages held out for the dev F1")
    text_only: bool = setting(False, "no boxes: a BERT or ELECTRA token classifier (baseline)")
    overlaps: str = setting(
        "first",
        "of annotations that overlap, the one that labels the tokens: first (in file order, as "
        "published) or longest",
    )
    top_k: int = setting(
        5,
        "per token, the first of the model's top this-many labels that is O or an attribute of "
        "the page's category (as published: 5; 1: the best label, O where it is not the "
        "category's), in the dev F1 and by default at prediction",
    )
    bridge_gaps: int = setting(
        3,
        "the published gap fixing: an I-x after a run of up to this many O continues the value "
        "of an I-x before the run (the O become I-x) or, after another tag, starts a new one "
        "(as published: 3, fix_o_tags' search limit 5; 0: off), in the dev F1 and by default "
        "at prediction",
    )


@dataclass
class Recipe:
    objective: str = "mvlm"
    model: dict = field(default_factory=dict)
    optimizer: Optimizer = field(default_factory=Optimizer)
    schedule: Schedule = field(default_factory=Schedule)
    data: Data = field(default_factory=Data)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    electra: Electra = field(default_factory=Electra)
    finetune: Finetune = field(default_factory=Finetune)

    def dump(self) -> str:
        """The recipe as YAML, sections in order (what `recipe.yaml` of a run holds)."""
        return yaml.safe_dump(dataclasses.asdict(self), allow_unicode=True, sort_keys=False)


SECTIONS = {name: kind for name, kind in get_type_hints(Recipe).items()
            if dataclasses.is_dataclass(kind)}  # fmt: skip


def valid_keys(command: str | None = None) -> list[str]:
    """Every setting's `section.key` name, or those `command` (pretrain, finetune) reads."""
    keys = ["objective", "model.*"] if command in (None, "pretrain") else []
    for section, cls in SECTIONS.items():
        fields = dataclasses.fields(cls) if command is None else _for(command)[section]
        keys += [f"{section}.{f.name}" for f in fields]
    return keys


def _coerce(name: str, value: Any, kind: type) -> Any:
    """A YAML value as the field's type: YAML reads 5e-5 as a string and a bare `no` as false."""
    if kind is str and value is False:
        return "no"
    if kind is bool and isinstance(value, bool):
        return value
    try:
        if kind in (int, float) and not isinstance(value, bool):
            number = kind(value)
            if kind is int and isinstance(value, float) and number != value:
                raise ValueError
            return number
        if kind is str and isinstance(value, str):
            return value
    except (TypeError, ValueError):
        pass
    raise UserError(f"{name}: expected {kind.__name__}, got {value!r}")


def _parse(key: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"--{key}: cannot parse {text!r}") from None


def _unknown(where: str, key: str, command: str | None = None) -> UserError:
    valid = valid_keys(command)
    sections = [k for k in valid if k.partition(".")[2] == key]
    hint = f" (did you mean {sections[0]}?)" if sections else ""
    return UserError(f"{where}: unknown setting {key!r}{hint}; valid: {', '.join(valid)}")


def _check_architecture_key(where: str, name: str) -> None:
    """A `model.KEY` must be a setting of the configurations layoutja builds (LayoutLM, ELECTRA):
    transformers would take any name, and a typo would train the default silently."""
    import difflib

    from transformers import ElectraConfig, LayoutLMConfig

    known = set(LayoutLMConfig().to_dict()) | set(ElectraConfig().to_dict())
    if name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean model.{close[0]}?)" if close else ""
        raise UserError(f"{where}: model.{name} is not an architecture setting of LayoutLM or "
                        f"ELECTRA{hint}")  # fmt: skip


def load_config(path: str | Path | None, overrides: dict[str, str] | None = None) -> Recipe:
    """A Recipe: its defaults, then a YAML recipe, then `section.key` overrides (YAML text)."""
    where = str(path or "settings")
    values = read_yaml_mapping(path, "a recipe is a mapping of sections") if path else {}
    for key, text in (overrides or {}).items():
        section, _, name = key.replace("-", "_").partition(".")
        if not name:
            values[section] = _parse(key, text)
        else:
            if not isinstance(values.setdefault(section, {}), dict):
                raise UserError(f"{where}: {section} is a section, not a value")
            values[section][name] = _parse(key, text)
    recipe = Recipe()
    for key, value in values.items():
        if key == "objective":
            recipe.objective = str(value)
        elif key == "model":
            if not isinstance(value, dict):
                raise UserError(f"{where}: model is a mapping of architecture settings")
            for name in value:
                _check_architecture_key(where, name)
            recipe.model = dict(value)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise UserError(f"{where}: {key} is a section (a mapping), not {value!r}")
            section = getattr(recipe, key)
            types = get_type_hints(type(section))
            for name, item in value.items():
                if name not in types:
                    raise _unknown(where, f"{key}.{name}")
                setattr(section, name, _coerce(f"{where}: {key}.{name}", item, types[name]))
        else:
            raise _unknown(where, key)
    _validate(recipe)
    return recipe


def _validate(recipe: Recipe) -> None:
    if recipe.objective not in OBJECTIVES:
        raise UserError(f"objective must be one of {OBJECTIVES}, not {recipe.objective!r}")
    precision = recipe.schedule.mixed_precision
    if precision not in ("fp16", "bf16", "no"):
        raise UserError(f"schedule.mixed_precision must be fp16, bf16 or no, not {precision!r}")
    if recipe.electra.generator_factor < 1:
        raise UserError("electra.generator_factor must be at least 1")
    if recipe.finetune.overlaps not in ("first", "longest"):
        raise UserError(
            f"finetune.overlaps must be first or longest, not {recipe.finetune.overlaps!r}"
        )
    if recipe.objective == "token-classification" and recipe.model:
        raise UserError("a fine-tuning recipe has no model section: fine-tuning takes the "
                        "architecture of --model")  # fmt: skip
    if recipe.finetune.bridge_gaps < 0:
        raise UserError("finetune.bridge_gaps must be at least 0 (0: off)")
    if recipe.finetune.top_k < 1:
        raise UserError("finetune.top_k must be at least 1 (1: the best label)")
    c = recipe.checkpoint
    if recipe.data.shuffle_parts < 1 or recipe.schedule.timeout_minutes <= 0:
        raise UserError("data.shuffle_parts must be at least 1, schedule.timeout_minutes above 0")
    if min(c.keep_checkpoints, c.log_every, c.save_every, c.eval_every) < 1:
        raise UserError(
            "checkpoint.keep_checkpoints, log_every, save_every and eval_every must be at least 1"
        )


def _for(command: str) -> dict[str, list[dataclasses.Field]]:
    """The settings `command` (pretrain or finetune) reads, by section."""
    section_only = {"electra": "pretrain", "finetune": "finetune"}
    return {
        section: [f for f in dataclasses.fields(cls)
                  if (f.metadata["only"] or section_only.get(section, command)) == command]
        for section, cls in SECTIONS.items()
    }  # fmt: skip


def add_recipe_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """`--config` and one `--section.key` option per setting that `command` reads, with its
    help and default.

    Values stay text (parsed as YAML by `load_config`), so a recipe file and the command line
    read the same way; `recipe_overrides` collects what was given. `--model.KEY` (any
    architecture setting) is accepted by `recipe_overrides` from the unparsed arguments.
    """
    if command == "pretrain":
        parser.add_argument("--config", metavar="RECIPE", help="YAML recipe (train/mvlm-base.yaml, "
                            "electra-base.yaml, ...; default: the published MVLM recipe, "
                            "mvlm-base.yaml)")  # fmt: skip
        parser.add_argument("--objective", default=argparse.SUPPRESS, choices=OBJECTIVES[:2],
                            help="mvlm (LayoutLM) or electra (default: mvlm)")  # fmt: skip
        parser.add_argument_group(
            "recipe section model",
            "--model.KEY VALUE: an architecture setting of LayoutLMConfig (mvlm) or "
            "ElectraConfig (electra, the discriminator's), e.g. --model.hidden_size 256 "
            "--model.num_hidden_layers 4; used when training from scratch (without --init)",
        )
    else:
        parser.add_argument("--config", metavar="RECIPE", required=True,
                            help="YAML recipe: train/finetune-shinra.yaml (the published) or "
                            "train/finetune-shinra-bert.yaml (the BERT baseline)")  # fmt: skip
    # fine-tuning always has a recipe: a default is what applies where the recipe is silent
    said = "default" if command == "pretrain" else "where the recipe has none"
    for section, fields in _for(command).items():
        if not fields:
            continue
        group = parser.add_argument_group(f"recipe section {section}")
        for f in fields:
            kind = get_type_hints(SECTIONS[section])[f.name].__name__
            group.add_argument(f"--{section}.{f.name}", dest=f"{section}.{f.name}",
                               default=argparse.SUPPRESS, metavar=kind.upper(),
                               help=f"{f.metadata['help']} ({said}: {f.default})")  # fmt: skip


def recipe_overrides(args: argparse.Namespace, extra: list[str], command: str) -> dict[str, str]:
    """The `section.key` settings given on the command line, `--model.KEY VALUE` pairs among
    the unparsed arguments included (pretrain only); anything else unparsed is refused, a
    setting of the other command by its name."""
    given = {k: v for k, v in vars(args).items() if "." in k or k == "objective"}
    i = 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--"):
            raise UserError(f"unrecognized argument {item!r}")
        key, _, value = item[2:].partition("=")
        if not (item.startswith("--model.") and command == "pretrain"):
            raise _not_for(command, key)
        if not value:
            if i + 1 >= len(extra):
                raise UserError(f"{item}: needs a value")
            value, i = extra[i + 1], i + 1
        given[key] = value
        i += 1
    return given


def _not_for(command: str, key: str) -> UserError:
    """The error for a `--KEY` that `command` does not take."""
    other = "finetune" if command == "pretrain" else "pretrain"
    section, _, name = key.replace("-", "_").partition(".")
    fields = _for(other).get(section, [])
    theirs = section in ("objective", "model") or name in [f.name for f in fields]
    if theirs:
        why = {"model": " (fine-tuning takes the architecture of --model)",
               "objective": " (fine-tuning's is token-classification)"}  # fmt: skip
        why = why.get(section, "")
        return UserError(f"--{key} is a setting of `layoutja {other}`, not of {command}{why}; "
                         f"`layoutja {command} --help` lists {command}'s")  # fmt: skip
    return _unknown("the command line", key, command)
