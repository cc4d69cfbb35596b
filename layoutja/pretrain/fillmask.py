"""`layoutja fill-mask`: the top candidates for each [MASK] of a text.

A text-only masked LM (BERT, an ELECTRA generator) answers through transformers' fill-mask
pipeline. A layout-aware model (LayoutLM from an MVLM run, a layout-aware ELECTRA generator)
needs boxes, so the text is first rendered as a small HTML page and localized like any page;
`[MASK]` stays one token there and gets the box of its rendered text. Special and unused
vocabulary entries (`[UNK]`, `[unused3]`, any `[...]`) are never proposed.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch
from transformers import AutoModelForMaskedLM, PreTrainedModel

from layoutja.common import UserError, device, model_type
from layoutja.hub import resolve, tokenizer_for
from layoutja.pretrain import layout_electra
from layoutja.pretrain.from_bert import quiet_loading

LAYOUT_AWARE = ("layoutlm", layout_electra.MODEL_TYPE)


def unproposable(vocab: dict[str, int]) -> list[int]:
    """The ids of special and unused entries (`[PAD]`, `[UNK]`, `[unused0]`, ...): no answer."""
    return sorted(i for token, i in vocab.items() if token.startswith("[") and token.endswith("]"))


def fill_mask(model: str | Path, text: str, top_k: int = 5, *, tokenizer: str | None = None,
              revision: str | None = None) -> list[list[tuple[str, float]]]:  # fmt: skip
    """For each [MASK] in `text`, the `top_k` (token, probability) pairs of `model` (a directory
    or a hub name at `revision`; `tokenizer`: the MeCab tokenizer when the model's own is not
    one), computed on the accelerator when there is one."""
    if "[MASK]" not in text:
        raise UserError("the text has no [MASK] to fill")
    model_dir = resolve(model, revision)
    tokenizer_dir = tokenizer_for(model_dir, tokenizer, str(model))
    if model_type(model_dir) not in LAYOUT_AWARE:
        from transformers import AutoTokenizer, pipeline

        words = AutoTokenizer.from_pretrained(tokenizer_dir)
        skipped = set(unproposable(words.get_vocab()))
        fill = pipeline("fill-mask", model=masked_lm(model_dir, str(model)),
                        top_k=top_k + len(skipped), device=device(), tokenizer=words)  # fmt: skip
        answers = fill(text)
        answers = [answers] if answers and isinstance(answers[0], dict) else answers
        return [[(a["token_str"], a["score"]) for a in one if a["token"] not in skipped][:top_k]
                for one in answers]  # fmt: skip
    return _fill_layoutlm(model_dir, tokenizer_dir, text, top_k, str(model))


def masked_lm(model_dir: Path, name: str) -> PreTrainedModel:
    """The masked LM of `model_dir`. What transformers reports as unused (a BERT's pooler and
    next-sentence head) is expected and not shown; a model without a masked-LM head (an ELECTRA
    discriminator, a token classifier) is refused: its answers would come from random weights."""
    with quiet_loading():
        model, info = AutoModelForMaskedLM.from_pretrained(model_dir, output_loading_info=True)
    head = sorted(key for key in info["missing_keys"] if ".pooler." not in key)
    if head:
        raise UserError(
            f"{name}: not a masked LM ({len(head)} weights of the masked-LM head, such as "
            f"{head[0]}, are missing): fill-mask takes an MVLM run, a BERT or an ELECTRA "
            "generator (an ELECTRA discriminator detects replaced tokens; it fills no masks)"
        )
    return model


@torch.no_grad()
def _fill_layoutlm(
    model_dir: Path, tokenizer_dir: Path, text: str, top_k: int, name: str
) -> list[list[tuple[str, float]]]:
    from layoutja.localize.browser import Browser
    from layoutja.localize.page import localize_html, rendering
    from layoutja.pretrain.windows import CLS_BOX, SEP_BOX, SpecialIds
    from layoutja.text.tokenizer import JapaneseTokenizer

    model = masked_lm(model_dir, name).to(device()).eval()  # refused before any rendering
    tokenizer = JapaneseTokenizer.from_pretrained(tokenizer_dir)
    specials = SpecialIds.from_vocab(tokenizer.vocab)
    page = f"<!DOCTYPE html><html><body><p>{html.escape(text)}</p></body></html>"
    with Browser() as browser, rendering("the text to fill"):
        record = localize_html(page.encode("utf-8"), tokenizer, browser)
    ids = [specials.cls, *record["input_ids"], specials.sep]
    boxes = [CLS_BOX, *record["bbox"], SEP_BOX]  # as in training windows
    inputs = {"input_ids": torch.tensor([ids]), "bbox": torch.tensor([boxes])}
    logits = model(**{k: v.to(model.device) for k, v in inputs.items()}).logits[0].float()
    tokens = {i: t for t, i in tokenizer.vocab.items()}
    logits[:, unproposable(tokenizer.vocab)] = -torch.inf
    out = []
    for position in (i for i, t in enumerate(ids) if t == specials.mask):
        probabilities = logits[position].softmax(-1)
        best = probabilities.topk(top_k)
        out.append([(tokens[i], p) for p, i in zip(best.values.tolist(), best.indices.tolist())])
    return out
