"""The layout-aware ELECTRA models: a generator (a LayoutLM masked LM with ELECTRA's generator
shape) and a discriminator (a LayoutLM body with ELECTRA's replaced-token-detection head).

ELECTRA's generator is narrower than its discriminator (hidden size, heads and FFN divided by a
factor) but shares the discriminator's whole embedding module. Here that module is LayoutLM's
(word, 1-D and 2-D position, token type), `embedding_size` wide; a linear projection takes it to
the generator's width, and the LM head projects back and decodes with the word embeddings
themselves (tied by construction: there is no separate decoder matrix).

The discriminator is a `LayoutLMModel` (model type `layoutlm`, so `AutoModel` and
`AutoModelForTokenClassification` load its body for fine-tuning) with ELECTRA's head, one logit
per token. ELECTRA's discriminator has no pooler: none is trained, so none is exported (an
identity takes its place in LayoutLMModel's forward); a model loaded from the export for
sequence classification gets a freshly initialized pooler, and says so.

This file imports only torch and transformers: `save_pretrained` copies it next to the weights,
so plain transformers loads the exports with
`AutoModelForMaskedLM.from_pretrained(GENERATOR, trust_remote_code=True)` and
`AutoModelForPreTraining.from_pretrained(DISCRIMINATOR, trust_remote_code=True)`; inside
layoutja the classes are used directly and no remote code is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    LayoutLMConfig,
    LayoutLMModel,
    LayoutLMPreTrainedModel,
)
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.electra.modeling_electra import (
    ElectraDiscriminatorPredictions,
    ElectraForPreTrainingOutput,
    ElectraGeneratorPredictions,
)
from transformers.models.layoutlm.modeling_layoutlm import LayoutLMEmbeddings, LayoutLMEncoder

MODEL_TYPE = "layout-electra-generator"


@strict
class LayoutElectraGeneratorConfig(LayoutLMConfig):
    """A LayoutLM configuration plus the (shared) embedding width."""

    model_type = MODEL_TYPE
    embedding_size: int = 768


class LayoutElectraGenerator(LayoutLMPreTrainedModel):
    """Shared-width LayoutLM embeddings → projection → LayoutLM encoder → ELECTRA's generator
    head → logits decoded with the word embeddings."""

    config_class = LayoutElectraGeneratorConfig

    def __init__(self, config: LayoutElectraGeneratorConfig):
        super().__init__(config)
        wide = LayoutLMConfig(**{**config.to_dict(), "hidden_size": config.embedding_size})
        self.embeddings = LayoutLMEmbeddings(wide)  # replaced by the shared module in training
        self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        self.encoder = LayoutLMEncoder(config)
        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.lm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def hidden(
        self, input_ids: torch.Tensor, bbox: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The encoder's last hidden states (batch, length, hidden)."""
        embedded = self.embeddings_project(self.embeddings(input_ids=input_ids, bbox=bbox))
        # The additive mask LayoutLMModel builds: 0 where attended, the dtype's minimum elsewhere.
        mask = attention_mask[:, None, None, :].to(embedded.dtype)
        mask = (1.0 - mask) * torch.finfo(embedded.dtype).min
        return self.encoder(embedded, mask).last_hidden_state

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits of hidden states, decoded with the word embeddings."""
        words = self.get_input_embeddings().weight
        return F.linear(self.generator_predictions(hidden), words, self.lm_bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: object,
    ) -> MaskedLMOutput:
        if bbox is None:
            bbox = input_ids.new_zeros((*input_ids.shape, 4))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.lm_logits(self.hidden(input_ids, bbox, attention_mask))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), labels.view(-1))
        return MaskedLMOutput(loss=loss, logits=logits)


class LayoutElectraDiscriminator(LayoutLMPreTrainedModel):
    """LayoutLMModel (without pooler) → ELECTRA's discriminator head → a logit per token:
    whether the token was replaced."""

    config_class = LayoutLMConfig

    def __init__(self, config: LayoutLMConfig):
        super().__init__(config)
        self.layoutlm = LayoutLMModel(config)
        self.layoutlm.pooler = nn.Identity()  # no pooler: see the module docstring
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.layoutlm.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.layoutlm.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor,
        bbox: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **_: object,
    ) -> ElectraForPreTrainingOutput:
        """`labels`: 1 where a token was replaced, 0 where it is the original; the loss is the
        binary cross-entropy over the attended tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.layoutlm(input_ids=input_ids, bbox=bbox, attention_mask=attention_mask)
        logits = self.discriminator_predictions(hidden.last_hidden_state)
        loss = None
        if labels is not None:
            real = attention_mask.bool()
            loss = F.binary_cross_entropy_with_logits(logits[real].float(), labels[real].float())
        return ElectraForPreTrainingOutput(loss=loss, logits=logits)


LayoutElectraDiscriminator.register_for_auto_class("AutoModelForPreTraining")
LayoutElectraGeneratorConfig.register_for_auto_class()
LayoutElectraGenerator.register_for_auto_class("AutoModelForMaskedLM")
AutoConfig.register(MODEL_TYPE, LayoutElectraGeneratorConfig, exist_ok=True)
AutoModelForMaskedLM.register(LayoutElectraGeneratorConfig, LayoutElectraGenerator, exist_ok=True)
