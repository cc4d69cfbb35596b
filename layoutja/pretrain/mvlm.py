"""The MVLM objective around a standard `LayoutLMForMaskedLM`.

`MVLMModel.forward` returns the loss of a masked batch. The vocabulary projection (hidden →
32,768 logits) is computed only for the selected tokens, ~15% of them: computed for every token
it is a large share of a step's FLOPs and memory. The weights stay in `LayoutLMForMaskedLM`'s
layout (`layoutlm.*`, `cls.predictions.*`), so the trained model is saved with `save_pretrained`
and loads with `AutoModelForMaskedLM`. Wrapping it in one module keeps the whole step inside its
`forward`, which DDP needs to synchronize gradients.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LayoutLMConfig, LayoutLMForMaskedLM

from layoutja.common import UserError, model_type
from layoutja.training.log import model_flops_per_token


class MVLMModel(nn.Module):
    def __init__(self, mlm: LayoutLMForMaskedLM):
        super().__init__()
        self.mlm = mlm
        # The pooler takes no part in MVLM: frozen, so DDP does not wait for its gradients.
        if mlm.layoutlm.pooler is not None:
            mlm.layoutlm.pooler.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        denominators: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"loss": the cross-entropy summed over the masked tokens, divided by the masked tokens
        of the global batch (`denominators["masked"]`; by default this batch's)}."""
        hidden = self.mlm.layoutlm(
            input_ids=input_ids, bbox=bbox, attention_mask=attention_mask
        ).last_hidden_state
        selected = labels != -100
        logits = self.mlm.cls(hidden[selected])  # (selected tokens, vocabulary)
        if not len(logits):  # nothing masked in this micro-batch (short pages): a zero loss
            return {"loss": logits.sum() * 0.0}  # that reaches every weight, as DDP needs
        total = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
        count = (denominators or {}).get("masked", len(logits))
        return {"loss": total / count}

    @staticmethod
    def token_counts(batch: dict) -> dict[str, int]:
        """The tokens the loss averages over: the masked ones."""
        return {"masked": int((batch["labels"] != -100).sum())}

    # Held-out metrics as (numerator, denominator) of the sums `scores` returns.
    METRICS = {"eval_loss": ("loss", "masked"), "eval_accuracy": ("correct", "masked")}

    def scores(self, input_ids, bbox, attention_mask, labels) -> dict[str, torch.Tensor]:
        """Sums over a held-out batch: the cross-entropy and the correct predictions of the
        masked tokens, and their count."""
        hidden = self.mlm.layoutlm(
            input_ids=input_ids, bbox=bbox, attention_mask=attention_mask
        ).last_hidden_state
        selected = labels != -100
        logits = self.mlm.cls(hidden[selected]).float()
        target = labels[selected]
        loss = F.cross_entropy(logits, target, reduction="sum")
        return {
            "loss": loss,
            "correct": (logits.argmax(-1) == target).sum(),
            "masked": selected.sum(),
        }

    def exports(self) -> dict[str, LayoutLMForMaskedLM]:
        """What to save where: the masked LM, in the output directory itself."""
        return {"": self.mlm}

    def flops_per_token(self, seq_len: int) -> float:
        return model_flops_per_token(self.mlm.config, seq_len)


def load_layoutlm(init: Path, pad_token_id: int, report: bool = True) -> LayoutLMForMaskedLM:
    """A LayoutLMForMaskedLM from a LayoutLM directory, or converted from a BERT on the fly
    (with `layoutja init-model`'s report, where `report`). Weights are fp32 whatever the file
    holds: mixed precision needs fp32 master weights. `pad_token_id` is the tokenizer's."""
    kind = model_type(init)
    if kind == "layoutlm":
        return LayoutLMForMaskedLM.from_pretrained(
            init, dtype=torch.float32, pad_token_id=pad_token_id
        )
    if kind == "bert":
        from layoutja.pretrain.from_bert import layoutlm_from_bert, print_report

        model, copied = layoutlm_from_bert(init, pad_token_id=pad_token_id)
        if report:
            print_report(copied, str(init))
        return model
    raise UserError(f"{init}: a {kind} model; MVLM starts from a BERT or a LayoutLM")


def new_layoutlm(vocab_size: int, architecture: dict, pad_token_id: int) -> LayoutLMForMaskedLM:
    """A randomly initialized LayoutLMForMaskedLM (training from scratch, tests, the demo)."""
    try:
        config = LayoutLMConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **architecture)
    except TypeError as e:
        raise UserError(f"model settings: {e}") from None
    return LayoutLMForMaskedLM(config)
