"""ELECTRA from a generator and a discriminator published as two checkpoints (izumi-lab's
electra-base-japanese-generator and -discriminator), to go on pretraining: text-only as they are,
or layout-aware, made the way `init-model` makes a LayoutLM from a BERT: every weight copied, the
x, y, h and w position embeddings new (LayoutLM's initializer), and a report of what was copied
and what is new.

layoutja's ELECTRA shares one embedding module between its generator and its discriminator (as
ELECTRA does, and as layoutja's own exports hold it); the two published checkpoints each hold
their own. The discriminator's is kept, as the one fine-tuning starts from; the generator's is
dropped, and the report says how far it was from the discriminator's, tensor by tensor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from transformers import ElectraForMaskedLM, ElectraForPreTraining, PreTrainedModel

from layoutja.common import UserError, model_type
from layoutja.pretrain.electra import ElectraPretraining
from layoutja.pretrain.from_bert import (
    InitReport,
    copy_weights,
    layout_config,
    print_report,
    quiet_loading,
    renamer,
    seeded,
)
from layoutja.pretrain.layout_electra import (
    LayoutElectraDiscriminator,
    LayoutElectraGenerator,
    LayoutElectraGeneratorConfig,
)

# transformers' ELECTRA parameter prefixes and where they live in layoutja's layout-aware models.
DISCRIMINATOR = {
    "electra.": "layoutlm.",
    "discriminator_predictions.": "discriminator_predictions.",
}
GENERATOR = {
    "electra.embeddings_project.": "embeddings_project.",
    "electra.encoder.": "encoder.",
    "generator_predictions.": "generator_predictions.",
    "generator_lm_head.bias": "lm_bias",
}
# The generator's own embeddings give way to the discriminator's, and its LM head decodes with
# their word embeddings (its matrix is that tensor).
SHARED = ("electra.embeddings.", "generator_lm_head.weight")


def published_electra(
    discriminator: Path,
    generator: Path,
    *,
    layout: bool,
    pad_token_id: int,
    discriminator_weight: float = 50.0,
    report: bool = True,
) -> ElectraPretraining:
    """Generator and discriminator from two transformers ELECTRA checkpoints (directories), one
    embedding module for both (the discriminator's); layout-aware: converted, with new 2-D
    embeddings. `report`: print what was copied, what is new and how the embeddings differed."""
    disc = _load(discriminator, ElectraForPreTraining, "discriminator", pad_token_id)
    gen = _load(generator, ElectraForMaskedLM, "generator", pad_token_id)
    differences = embedding_differences(disc.electra.embeddings, gen.electra.embeddings, generator)
    copied = {}
    if layout:
        if disc.config.embedding_size != disc.config.hidden_size:
            raise UserError(
                f"{discriminator}: embeddings {disc.config.embedding_size} wide, hidden size "
                f"{disc.config.hidden_size}: a LayoutLM body takes embeddings as wide as itself"
            )
        config = layout_config(disc.config)
        disc, copied[discriminator] = _convert(
            disc, LayoutElectraDiscriminator, config, DISCRIMINATOR, discriminator
        )
        config = layout_config(gen.config, cls=LayoutElectraGeneratorConfig)
        gen, copied[generator] = _convert(
            gen, LayoutElectraGenerator, config, GENERATOR, generator, skip=SHARED
        )
        # the discriminator's embeddings, 2-D ones included, are the generator's too
        new = copied[generator].new
        copied[generator].new = [n for n in new if not n.startswith("embeddings.")]
    if report:
        print_published_report(copied, differences, layout)
    return ElectraPretraining(gen, disc, layout, discriminator_weight)


def _load(path: Path, cls: type, role: str, pad_token_id: int) -> PreTrainedModel:
    """A transformers ELECTRA checkpoint of `cls`, in fp32, every weight of it in the file."""
    kind = model_type(path)
    if kind != "electra":
        raise UserError(f"{path}: a {kind} model, not an ELECTRA {role}")
    with quiet_loading():  # our report says what was copied
        model, info = cls.from_pretrained(path, output_loading_info=True, dtype=torch.float32,
                                          pad_token_id=pad_token_id)  # fmt: skip
    missing = info.get("missing_keys") or info.get("mismatched_keys")
    if missing:
        raise UserError(f"{path}: not an ELECTRA {role} checkpoint ({len(missing)} weights "
                        f"missing or misshapen, e.g. {sorted(missing)[0]})")  # fmt: skip
    return model


def _convert(source: PreTrainedModel, cls: type, config, prefixes: dict[str, str], path: Path,
             skip: tuple[str, ...] = ()) -> tuple[PreTrainedModel, InitReport]:  # fmt: skip
    """The layout-aware `cls` with every weight of `source` copied, but those named `skip...`."""
    model = seeded(cls, config)
    weights = {k: v for k, v in source.state_dict().items() if not k.startswith(skip)}
    return model, copy_weights(model, weights, renamer(prefixes), path)


def embedding_differences(kept: nn.Module, dropped: nn.Module,
                          generator: Path) -> dict[str, tuple[float, float]]:  # fmt: skip
    """For each tensor of the two embedding modules: (max |dropped − kept|, ‖dropped − kept‖ /
    ‖kept‖); an error where they cannot be one module (other shapes)."""
    ours, theirs = kept.state_dict(), dropped.state_dict()
    differences = {}
    for name, tensor in ours.items():
        other = theirs.get(name)
        if other is None or other.shape != tensor.shape:
            raise UserError(
                f"{generator}: its embeddings cannot be the discriminator's ({name}: "
                f"{None if other is None else tuple(other.shape)} vs {tuple(tensor.shape)})"
            )
        delta = (other - tensor).float()
        relative = (delta.norm() / tensor.float().norm().clamp(min=1e-12)).item()
        differences[name] = (delta.abs().max().item(), relative)
    return differences


def print_published_report(
    copied: dict[Path, InitReport], differences: dict[str, tuple[float, float]], layout: bool
) -> None:
    """What was copied and what is new (layout-aware), and which embeddings were kept, on
    stderr."""
    if not layout:
        print("text-only ELECTRA: both models loaded as published", file=sys.stderr)
    for path, report in copied.items():
        print_report(report, str(path))
    print(
        "one embedding module for both models (layoutja shares it): the discriminator's is "
        "kept, the generator's dropped; the generator's differed from it by:",
        file=sys.stderr,
    )
    for name, (largest, relative) in differences.items():
        change = f"max |Δ| {largest:.4g}, ‖Δ‖/‖kept‖ {relative:.4g}" if largest else "identical"
        print(f"  {name}: {change}", file=sys.stderr)
