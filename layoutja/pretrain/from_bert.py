"""Turn a Japanese BERT checkpoint into a LayoutLM for MVLM pretraining (the published recipe).

Every BERT weight is copied: word, 1-D position and token-type embeddings, the embedding
LayerNorm, all encoder layers, the pooler and the MLM head when the checkpoint has them. The x, y,
h and w position embeddings (`max_2d_position_embeddings` rows) are new, drawn by LayoutLM's own
initializer (normal, std = the config's `initializer_range`). A checkpoint without an MLM head
(`BertModel`) gets a fresh head; BERT's next-sentence head is not used.

The checkpoint is read with `BertForPreTraining.from_pretrained(..., output_loading_info=True)`,
which accepts `BertForPreTraining`, `BertForMaskedLM` and `BertModel` checkpoints (local or hub)
and says which weights the file did not have.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    BertForPreTraining,
    LayoutLMConfig,
    LayoutLMForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging as transformers_logging

from layoutja.common import UserError, copy_tokenizer, model_type
from layoutja.hub import resolve, tokenizer_for
from layoutja.pretrain.windows import SpecialIds
from layoutja.text.tokenizer import load_vocab
from layoutja.training.card import ModelCard

# BERT's parameter prefixes and where they live in LayoutLMForMaskedLM.
PREFIXES = {"bert.": "layoutlm.", "cls.predictions.": "cls.predictions."}


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' load report (missing/unexpected weights) where the caller expects and
    reports them itself."""
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


@dataclass
class InitReport:
    copied: list[str] = field(default_factory=list)  # LayoutLM names copied from BERT
    new: list[str] = field(default_factory=list)  # LayoutLM names freshly initialized
    unused: list[str] = field(default_factory=list)  # BERT names with no place in LayoutLM


def layoutlm_from_bert(
    bert: str | os.PathLike, max_2d_position_embeddings: int = 1024,
    pad_token_id: int | None = None,
) -> tuple[LayoutLMForMaskedLM, InitReport]:  # fmt: skip
    """A LayoutLMForMaskedLM holding every weight of the BERT checkpoint directory `bert`
    (`pad_token_id`: its tokenizer's, when the BERT's config may say otherwise)."""
    kind = model_type(bert, "a BERT checkpoint")
    if kind != "bert":
        raise UserError(f"{bert}: a {kind} model, not a BERT checkpoint")
    try:
        with quiet_loading():  # our report says what was copied and what is new
            source, info = BertForPreTraining.from_pretrained(
                str(bert), output_loading_info=True, dtype=torch.float32
            )
    except (OSError, ValueError) as e:
        raise UserError(f"{bert}: cannot load a BERT checkpoint: {e}") from None
    if info.get("mismatched_keys"):
        raise UserError(f"{bert}: weights do not fit the config: {info['mismatched_keys'][:5]}")
    config = layout_config(source.config, max_2d_position_embeddings, pad_token_id)
    config.architectures = ["LayoutLMForMaskedLM"]
    model = seeded(LayoutLMForMaskedLM, config)
    # Weights the checkpoint lacks (a BertModel's heads) keep LayoutLM's fresh initialization.
    absent = set(info.get("missing_keys", []))
    weights = {k: v for k, v in source.state_dict().items() if k not in absent}
    report = copy_weights(model, weights, renamer(PREFIXES), bert)
    if not any(name.endswith("word_embeddings.weight") for name in report.copied):
        raise UserError(f"{bert}: no BERT weights found in the checkpoint")
    return model, report


def layout_config(source: PretrainedConfig, max_2d_position_embeddings: int = 1024,
                  pad_token_id: int | None = None, cls: type = LayoutLMConfig):  # fmt: skip
    """A LayoutLM configuration (`cls`) with the architecture of a BERT-shaped model's
    configuration `source` (BERT's, ELECTRA's) and `max_2d_position_embeddings` rows of boxes."""
    if max_2d_position_embeddings <= 1000:
        raise UserError(
            f"max_2d_position_embeddings {max_2d_position_embeddings}: boxes go up to 1000 "
            "([SEP] is 1000,1000,1000,1000), so at least 1001 rows are needed"
        )
    known = cls().to_dict()
    settings = {k: v for k, v in source.to_dict().items()
                if k in known and k not in ("model_type", "architectures")}  # fmt: skip
    config = cls(**{**settings, "max_2d_position_embeddings": max_2d_position_embeddings})
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    return config


def seeded(cls: type, config: PretrainedConfig) -> PreTrainedModel:
    """A new model drawn from a fixed seed: its new weights (the 2-D embeddings) are
    reproducible, and the caller's RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls(config)


def copy_weights(model: PreTrainedModel, weights: dict[str, torch.Tensor],
                 rename: Callable[[str], str | None], source: object) -> InitReport:  # fmt: skip
    """Copy `weights` into `model`, each under `rename(name)` (None: no place in it); what is
    not copied stays as initialized and is reported new (the 2-D embeddings)."""
    target = model.state_dict()
    report = InitReport()
    with torch.no_grad():
        for name, tensor in weights.items():
            mapped = rename(name)
            if mapped is None or mapped not in target:
                report.unused.append(name)
                continue
            if target[mapped].shape != tensor.shape:
                raise UserError(
                    f"{source}: {name} has shape {tuple(tensor.shape)}, the layout-aware model "
                    f"needs {tuple(target[mapped].shape)}"
                )
            target[mapped].copy_(tensor)
            report.copied.append(mapped)
    copied = set(report.copied)
    report.new = [n for n in target if n not in copied and not _is_tied(model, n)]
    return report


def print_report(report: InitReport, bert: str) -> None:
    """What was copied from BERT and what is new, on stderr."""
    print(f"copied from {bert}: {len(report.copied)} tensors", file=sys.stderr)
    for title, names in (("new (random init)", report.new), ("not used", report.unused)):
        if names:
            print(f"{title}: " + ", ".join(names), file=sys.stderr)


def renamer(prefixes: dict[str, str]) -> Callable[[str], str | None]:
    """Names of one model's weights → another's: the first matching prefix replaced (None: no
    place for the weight)."""

    def rename(name: str) -> str | None:
        for old, new in prefixes.items():
            if name.startswith(old):
                return new + name[len(old) :]
        return None

    return rename


def _is_tied(model: PreTrainedModel, name: str) -> bool:
    """The decoder shares the word embeddings and bias: copied through the weight it ties to."""
    return name in (getattr(model, "_tied_weights_keys", None) or {})


def init_model(
    bert: str | os.PathLike,
    out: Path,
    tokenizer: str | os.PathLike | None = None,
    max_2d_position_embeddings: int = 1024,
    revision: str | None = None,
) -> InitReport:
    """Write a LayoutLMForMaskedLM directory made from `bert` (a directory or a hub name, at
    `revision`), with its tokenizer alongside: `tokenizer` when given (with BERT's vocabulary),
    else BERT's own."""
    bert_dir = resolve(bert, revision, what="BERT checkpoint")
    tokenizer_dir = tokenizer_for(bert_dir, tokenizer, str(bert))
    pad = SpecialIds.from_vocab(load_vocab(tokenizer_dir / "vocab.txt")).pad
    model, report = layoutlm_from_bert(bert_dir, max_2d_position_embeddings, pad)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    copy_tokenizer(tokenizer_dir, out)
    origin = (
        f"layoutja init-model copied every BERT weight into it ({len(report.copied)} tensors); "
        f"new (random init): {', '.join(report.new)}. Pretrain it before use "
        f"(`layoutja pretrain --init {out}`)."
    )
    ModelCard(base={"": str(bert)}, origin=origin).write(out, model)
    return report
