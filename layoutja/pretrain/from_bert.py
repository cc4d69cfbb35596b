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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertForPreTraining,
    LayoutLMConfig,
    LayoutLMForMaskedLM,
)
from transformers.utils import logging as transformers_logging

from layoutja.common import UserError, copy_tokenizer, model_type
from layoutja.hub import resolve, tokenizer_for
from layoutja.pretrain.windows import SpecialIds
from layoutja.text.tokenizer import load_vocab

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
    if max_2d_position_embeddings <= 1000:
        raise UserError(
            f"max_2d_position_embeddings {max_2d_position_embeddings}: boxes go up to 1000 "
            "([SEP] is 1000,1000,1000,1000), so at least 1001 rows are needed"
        )
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
    absent = set(info.get("missing_keys", []))
    config = LayoutLMConfig(
        **{k: v for k, v in source.config.to_dict().items() if k in BertConfig().to_dict()},
        max_2d_position_embeddings=max_2d_position_embeddings,
    )
    if pad_token_id is not None:
        config.pad_token_id = pad_token_id
    config.architectures = ["LayoutLMForMaskedLM"]
    with torch.random.fork_rng():  # the new 2-D embeddings are reproducible; the caller's RNG
        torch.manual_seed(0)  # is left as it was
        model = LayoutLMForMaskedLM(config)
    target = model.state_dict()
    report = InitReport()
    with torch.no_grad():
        for name, tensor in source.state_dict().items():
            if name in absent:
                continue  # not in the checkpoint: keep LayoutLM's fresh initialization
            mapped = _map_name(name)
            if mapped is None or mapped not in target:
                report.unused.append(name)
                continue
            if target[mapped].shape != tensor.shape:
                raise UserError(
                    f"{bert}: {name} has shape {tuple(tensor.shape)}, LayoutLM needs "
                    f"{tuple(target[mapped].shape)}"
                )
            target[mapped].copy_(tensor)
            report.copied.append(mapped)
    if not any(name.endswith("word_embeddings.weight") for name in report.copied):
        raise UserError(f"{bert}: no BERT weights found in the checkpoint")
    copied = set(report.copied)
    report.new = [n for n in target if n not in copied and not _is_tied(model, n)]
    return model, report


def print_report(report: InitReport, bert: str) -> None:
    """What was copied from BERT and what is new, on stderr."""
    print(f"copied from {bert}: {len(report.copied)} tensors", file=sys.stderr)
    for title, names in (("new (random init)", report.new), ("not used", report.unused)):
        if names:
            print(f"{title}: " + ", ".join(names), file=sys.stderr)


def _map_name(name: str) -> str | None:
    for old, new in PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return None


def _is_tied(model: LayoutLMForMaskedLM, name: str) -> bool:
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
    return report
