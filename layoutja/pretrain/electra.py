"""ELECTRA pretraining: a small generator fills the masks, a discriminator spots replaced tokens.

As in the izumi-lab Japanese ELECTRA (and Clark et al. 2020): the generator has the
discriminator's depth and its hidden size, heads and FFN divided by `factor` (3); the whole
embedding module is one set of tensors shared by both; the generator's LM head decodes with those
word embeddings. A step masks 15% of the tokens (85% `[MASK]`, 15% unchanged; masking happens in
the data loader), the generator predicts them, a token is sampled from its distribution at each
masked position (its CDF inverted at a uniform draw that comes with the data, seeded by the
window, so any rank draws the same; no gradient flows through the sample), and the
discriminator labels every real token: 1 where the sample differs from the original. The loss
is the generator's MLM loss + `discriminator_weight` (50) × the discriminator's BCE, each
averaged over the global batch's tokens.

Two forms share the objective:
- text-only: transformers' `ElectraForMaskedLM` (generator) and `ElectraForPreTraining`
  (discriminator), exported as they are;
- layout-aware: the discriminator is a `LayoutElectraDiscriminator` (a LayoutLM body with
  ELECTRA's discriminator head), the generator a `LayoutElectraGenerator` (`layout_electra`);
  both take the 2-D boxes through the shared LayoutLM embeddings.

Both export with their heads (generator/ and discriminator/), so pretraining goes on from an
export (`--init`; from two checkpoints published apart, such as izumi-lab's, `from_electra`) and
the discriminator's replaced-token detection can be evaluated; the discriminator's body is what
fine-tuning starts from.

As in MVLM, the generator's vocabulary projection is computed only at the masked positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    LayoutLMConfig,
    PreTrainedModel,
)

from layoutja.common import UserError, model_type
from layoutja.pretrain.layout_electra import (
    LayoutElectraDiscriminator,
    LayoutElectraGenerator,
    LayoutElectraGeneratorConfig,
)
from layoutja.training.log import model_flops_per_token

# The discriminator's size where a recipe's model section leaves it out (ELECTRA base).
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072}  # fmt: skip


def generator_architecture(architecture: dict, factor: int) -> dict:
    """The generator's settings: the discriminator's width, heads and FFN divided by `factor`,
    the same depth; its embeddings stay the discriminator's width (they are shared)."""
    wide = {**BASE, **architecture}
    narrow = {**wide, "embedding_size": wide["hidden_size"]}
    for key in ("hidden_size", "num_attention_heads", "intermediate_size"):
        if wide[key] % factor:
            raise UserError(
                f"model.{key} {wide[key]} is not divisible by generator_factor {factor}"
            )
        narrow[key] = wide[key] // factor
    return narrow


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row drawn from softmax(logits) by inverting its CDF at `uniforms` (one
    draw in [0, 1) per row): the draws come with the data, seeded by the window, so the sample
    is the same whichever rank or micro-batch a window is in."""
    # In place: at 32 × 512 tokens and a 32k vocabulary each (masked, vocabulary) float32
    # temporary is about 300 MB.
    cdf = torch.softmax(logits, -1, dtype=torch.float32).cumsum_(-1)  # cast in the kernel
    target = uniforms.float().unsqueeze(-1) * cdf[:, -1:]
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def replaced_tokens(
    input_ids: torch.Tensor, labels: torch.Tensor, sampled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The discriminator's input and labels.

    `input_ids` is the masked batch, `labels` the original token where a position was selected
    for masking (-100 elsewhere), `sampled` the generator's token for each selected position in
    row-major order. Every selected position gets its sample; a position is labeled 1 (replaced)
    exactly where its token now differs from the original.
    """
    selected = labels != -100
    original = torch.where(selected, labels, input_ids)
    corrupted = input_ids.clone()
    corrupted[selected] = sampled
    return corrupted, (corrupted != original).float()


class ElectraPretraining(nn.Module):
    """Generator and discriminator in one module whose forward returns the step's losses."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module, layout: bool,
                 discriminator_weight: float = 50.0):  # fmt: skip
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.layout, self.discriminator_weight = layout, discriminator_weight
        # One embedding module for both, then the generator's LM head tied to its words.
        if layout:
            generator.embeddings = discriminator.layoutlm.embeddings
        else:
            generator.electra.embeddings = discriminator.electra.embeddings
            generator.tie_weights()

    def _generator_logits(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None,
        attention_mask: torch.Tensor,
        selected: torch.Tensor,
    ) -> torch.Tensor:
        """Vocabulary logits at the selected positions only: (selected tokens, vocabulary)."""
        if self.layout:
            hidden = self.generator.hidden(input_ids, bbox, attention_mask)
            return self.generator.lm_logits(hidden[selected])
        gen = self.generator
        hidden = gen.electra(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return gen.generator_lm_head(gen.generator_predictions(hidden[selected]))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        uniforms: torch.Tensor,
        bbox: torch.Tensor | None = None,
        denominators: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The step's losses: the generator's cross-entropy summed over the masked tokens and
        the discriminator's BCE summed over the real tokens, each divided by the global batch's
        count of them (`denominators`; by default this batch's)."""
        selected = labels != -100
        real = attention_mask.bool()
        counts = denominators or {"masked": selected.sum().clamp(min=1), "tokens": real.sum()}
        logits = self._generator_logits(input_ids, bbox, attention_mask, selected)
        if len(logits):
            generator_loss = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
            with torch.no_grad():
                sampled = sample_tokens(logits, uniforms[selected])
        else:  # nothing masked (short windows): a zero loss that still reaches every
            # generator weight, so data-parallel ranks all-reduce the same gradients
            generator_loss = logits.sum() * 0.0
            sampled = labels[selected]
        corrupted, replaced = replaced_tokens(input_ids, labels, sampled)
        boxes = {"bbox": bbox} if self.layout else {}
        disc_logits = self.discriminator(
            input_ids=corrupted, attention_mask=attention_mask, **boxes
        ).logits
        discriminator_loss = F.binary_cross_entropy_with_logits(
            disc_logits[real].float(), replaced[real], reduction="sum"
        )
        generator_loss = generator_loss / counts["masked"]
        discriminator_loss = discriminator_loss / counts["tokens"]
        return {
            "loss": generator_loss + self.discriminator_weight * discriminator_loss,
            "generator_loss": generator_loss.detach(),
            "discriminator_loss": discriminator_loss.detach(),
        }

    # Held-out metrics as (numerator, denominator) of the sums `scores` returns: the generator's
    # masked-token loss and accuracy, the discriminator's replaced-token accuracy.
    METRICS = {"eval_loss": ("loss", "masked"), "eval_accuracy": ("correct", "masked"),
               "eval_discriminator_accuracy": ("detected", "tokens")}  # fmt: skip

    def scores(self, input_ids, attention_mask, labels, uniforms, bbox=None) -> dict:
        """Sums over a held-out batch (see METRICS)."""
        selected, real = labels != -100, attention_mask.bool()
        logits = self._generator_logits(input_ids, bbox, attention_mask, selected).float()
        target = labels[selected]
        sampled = sample_tokens(logits, uniforms[selected]) if len(logits) else target
        corrupted, replaced = replaced_tokens(input_ids, labels, sampled)
        boxes = {"bbox": bbox} if self.layout else {}
        judged = self.discriminator(input_ids=corrupted, attention_mask=attention_mask, **boxes)
        detected = ((judged.logits > 0).float() == replaced) & real
        return {"loss": F.cross_entropy(logits, target, reduction="sum"),
                "correct": (logits.argmax(-1) == target).sum(), "masked": selected.sum(),
                "detected": detected.sum(), "tokens": real.sum()}  # fmt: skip

    @staticmethod
    def token_counts(batch: dict) -> dict[str, int]:
        """The tokens the two losses average over: the masked ones and the real ones."""
        return {"masked": int((batch["labels"] != -100).sum()),
                "tokens": int(batch["attention_mask"].sum())}  # fmt: skip

    def exports(self) -> dict[str, PreTrainedModel]:
        """What to save where: the generator and the discriminator, each with its head."""
        return {"generator": self.generator, "discriminator": self.discriminator}

    def flops_per_token(self, seq_len: int) -> float:
        """Both encoders on every token; the LM head only at masked positions (the
        discriminator's one-logit head is negligible)."""
        generator, discriminator = (m.config for m in self.exports().values())
        return model_flops_per_token(generator, seq_len) + model_flops_per_token(
            discriminator, seq_len, mask_fraction=0.0
        )


def new_electra(vocab_size: int, architecture: dict, *, layout: bool, factor: int = 3,
                discriminator_weight: float = 50.0, pad_token_id: int = 0,
                ) -> ElectraPretraining:  # fmt: skip
    """A randomly initialized generator/discriminator pair from the recipe's `model` section
    (the discriminator's settings; ELECTRA base's where it leaves one out)."""
    narrow = {**generator_architecture(architecture, factor), "pad_token_id": pad_token_id}
    architecture = {**BASE, **architecture, "pad_token_id": pad_token_id}
    try:
        if layout:
            discriminator = LayoutElectraDiscriminator(
                LayoutLMConfig(vocab_size=vocab_size, **architecture)
            )
            generator = LayoutElectraGenerator(
                LayoutElectraGeneratorConfig(vocab_size=vocab_size, **narrow)
            )
        else:
            wide = {"embedding_size": architecture["hidden_size"], **architecture}
            discriminator = ElectraForPreTraining(ElectraConfig(vocab_size=vocab_size, **wide))
            generator = ElectraForMaskedLM(ElectraConfig(vocab_size=vocab_size, **narrow))
    except TypeError as e:
        raise UserError(f"model settings: {e}") from None
    return ElectraPretraining(generator, discriminator, layout, discriminator_weight)


def load_electra(init: Path, *, layout: bool, discriminator_weight: float = 50.0,
                 pad_token_id: int = 0) -> ElectraPretraining:  # fmt: skip
    """Generator and discriminator from an ELECTRA export (`generator/`, `discriminator/`: a
    run's output or a checkpoint's `hf/`), to go on pretraining; fp32 whatever the files hold."""
    parts = {name: init / name for name in ("generator", "discriminator")}
    missing = [str(p) for p in parts.values() if not (p / "config.json").is_file()]
    if missing:
        raise UserError(
            f"{init}: not an ELECTRA export (no {', '.join(missing)}); a discriminator published "
            "on its own (izumi-lab's) takes its generator with --init-generator NAME"
        )
    kind = model_type(parts["discriminator"])
    if (kind == "layoutlm") != layout:
        form = "layout-aware" if layout else "text-only"
        raise UserError(f"{init}: a {kind} discriminator; the recipe trains {form} ELECTRA")
    classes = ((LayoutElectraGenerator, LayoutElectraDiscriminator) if layout
               else (ElectraForMaskedLM, ElectraForPreTraining))  # fmt: skip
    generator, discriminator = (
        cls.from_pretrained(parts[name], dtype=torch.float32, pad_token_id=pad_token_id)
        for cls, name in zip(classes, parts)
    )
    return ElectraPretraining(generator, discriminator, layout, discriminator_weight)
