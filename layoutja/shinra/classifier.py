"""The SHINRA token classifier: a token classification head on a pretrained encoder, and its
batches of labeled windows."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModelForTokenClassification,
    BertForTokenClassification,
    LayoutLMConfig,
    LayoutLMForTokenClassification,
)

from layoutja.common import UserError, model_type
from layoutja.pretrain.from_bert import layoutlm_from_bert, quiet_loading
from layoutja.pretrain.windows import collate, pad_rows
from layoutja.shinra.data import IGNORE


class TokenClassifier(nn.Module):
    """A token classification model whose forward returns the loss (one module for DDP)."""

    def __init__(self, model: nn.Module, text_only: bool):
        super().__init__()
        self.model, self.text_only = model, text_only
        # LayoutLM's pooler takes no part in token classification: frozen (and exported as it
        # is), so that DDP does not wait for gradients it never gets.
        body = getattr(model, model.base_model_prefix)
        if getattr(body, "pooler", None) is not None:
            body.pooler.requires_grad_(False)

    def forward(
        self, input_ids, bbox, attention_mask, labels, denominators: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """{"loss": the cross-entropy summed over the labeled tokens, divided by the labeled
        tokens of the global batch (`denominators["labeled"]`; by default this batch's)}."""
        boxes = {} if self.text_only else {"bbox": bbox}
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, **boxes).logits
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
                                ignore_index=IGNORE, reduction="sum")  # fmt: skip
        count = (denominators or {}).get("labeled", (labels != IGNORE).sum().clamp(min=1))
        return {"loss": total / count}

    @staticmethod
    def token_counts(batch: dict) -> dict[str, int]:
        """The tokens the loss averages over: the labeled ones."""
        return {"labeled": int((batch["labels"] != IGNORE).sum())}

    def top_labels(self, batch: dict, k: int) -> torch.Tensor:
        """The `k` best label ids of every token, best first: (batch, length, k)."""
        boxes = {} if self.text_only else {"bbox": batch["bbox"]}
        logits = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **boxes
        ).logits
        return logits.topk(k, dim=-1).indices

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels


def load_classifier(model_dir: Path, names: list[str], text_only: bool,
                    pad_token_id: int) -> nn.Module:  # fmt: skip
    """A token classification head on a pretrained LayoutLM (a BERT is converted), or for
    `text_only` on a BERT or an ELECTRA discriminator. `pad_token_id` is the tokenizer's (a
    config may say another: the padding row of the embeddings must be the tokenizer's)."""
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)),
              "label2id": {n: i for i, n in enumerate(names)},
              "pad_token_id": pad_token_id}  # fmt: skip
    kind = model_type(model_dir)
    # A new head on a pretrained body: transformers' "newly initialized" report is expected.
    with quiet_loading():
        if text_only:  # a BERT, or the discriminator of a text-only ELECTRA run
            model_class = (
                BertForTokenClassification
                if kind == "layoutlm"
                else AutoModelForTokenClassification
            )
            return model_class.from_pretrained(model_dir, **labels, dtype=torch.float32)
        if kind == "layoutlm":
            return LayoutLMForTokenClassification.from_pretrained(
                model_dir, **labels, dtype=torch.float32
            )
    if kind == "bert":
        mlm, _ = layoutlm_from_bert(model_dir, pad_token_id=pad_token_id)
        config = LayoutLMConfig(**{**mlm.config.to_dict(), **labels})
        model = LayoutLMForTokenClassification(config)
        model.layoutlm.load_state_dict(mlm.layoutlm.state_dict())
        return model
    raise UserError(
        f"{model_dir}: a {kind} model; fine-tuning takes a LayoutLM, a BERT or "
        "(finetune.text_only: true) an ELECTRA discriminator"
    )


def labeled_batch(items: list[tuple], pad: int) -> dict:
    """The tensors of a batch of windows, each (input_ids, bbox, labels) arrays
    (layoutja.shinra.data.window); labels are IGNORE where padded."""
    batch = collate([(ids, bbox) for ids, bbox, _ in items], pad)
    rows = [torch.as_tensor(labels) for _, _, labels in items]  # int64, as window() makes them
    return {**batch, "labels": pad_rows(rows, batch["input_ids"].shape[1], IGNORE)}
