"""The speed switches of the published recipe give the same training as without them: a
compiled encoder, pinned batches (length grouping: tests/test_order.py; prediction under
autocast: tests/test_finetune.py)."""

from __future__ import annotations

import pytest

from layoutja.pretrain.task import pretrain

from .conftest import recipe
from .test_distributed import losses


def test_a_compiled_encoder_gives_the_same_losses(localized_dir, unidic_dir, tmp_path):
    """torch.compile of the encoders (the masked-only head stays eager); dropout off, since the
    compiled and the eager dropout draw different masks."""
    runs = {}
    for switch in ("false", "true"):
        config = recipe("mvlm-tiny", max_steps=3, log_every=1, compile=switch, pin_memory=switch,
                        eval_pages=0)  # fmt: skip
        config.model.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        out = tmp_path / switch
        pretrain(config, localized_dir, out, tokenizer=str(unidic_dir), progress=False)
        runs[switch] = losses(out)
    assert runs["true"].keys() == runs["false"].keys() == {1, 2, 3}
    for step, loss in runs["false"].items():
        assert runs["true"][step] == pytest.approx(loss, rel=1e-4)
