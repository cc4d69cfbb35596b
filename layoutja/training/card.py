"""Model cards: the README.md that the Hugging Face hub shows, in every model directory layoutja
writes (a run's exports, each checkpoint's hf/, fine-tuning's best model, init-model's LayoutLM).

A card opens with the hub's YAML front matter (language, library_name, base_model where the
model started from a hub model, tags, pipeline_tag; `license` is left for the user, who knows
the licenses of the data and of the base model), then says what the model is, the recipe, the
data (from the manifests of the localized pages or of the packed text), the steps, the last and
held-out metrics, and how to load it: with the MeCab tokenizer saved beside it and, for a
layout-aware model, one box per token, as the published LayoutLM's card shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import PreTrainedModel

from layoutja.hub import PUBLISHED_LAYOUTLM, PUBLISHED_LAYOUTLM_FIX, hub_name
from layoutja.training.config import Recipe

LAYOUT_TYPES = ("layoutlm", "layout-electra-generator")  # the model types that take boxes
DATA_FACTS = {  # manifest facts and fine-tuning counts, in the card's words
    "source": "pages from",
    "pages": "pages",
    "instances": "text instances",
    "tokens": "tokens",
    "tokenizer": "tokenized with",
    "tokenizer_vocab_sha256": "vocabulary (vocab.txt sha256)",
    "chromium": "rendered in Chromium",
    "train_pages": "training pages",
    "dev_pages": "held-out (dev) pages",
    "labels": "labels",
}
# left for the user: the licenses of the data and of the base model decide it
LICENSE = "license:  # fill in (e.g. cc-by-sa-4.0 for a model trained on Wikipedia pages)"
DICTIONARY_PACKAGES = {"unidic_lite": "unidic-lite", "ipadic": "ipadic", "unidic": "unidic"}
PUBLISHED_NOTE = (
    f"{PUBLISHED_LAYOUTLM} ships `LayoutLMTokenizer` files (no MeCab), although it was trained "
    "with cl-tohoku/bert-base-japanese-v2's MeCab tokenizer: layoutja takes it with "
    f"`{PUBLISHED_LAYOUTLM_FIX}`. This directory carries that MeCab tokenizer, so "
    "`AutoTokenizer` gives the tokens the model knows, and layoutja needs no `--tokenizer` for it."
)

SNIPPET = """import torch
from transformers import AutoTokenizer, {auto}

model_dir = "{location}"  # this directory (or its hub name, once uploaded)
tokenizer = AutoTokenizer.from_pretrained(model_dir)  # BertJapaneseTokenizer: MeCab + WordPiece
model = {auto}.from_pretrained(model_dir{remote})

tokens = tokenizer.tokenize("こんにちは")
input_ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokens) \\
    + [tokenizer.sep_token_id]
encoding = {{"input_ids": torch.tensor([input_ids]),
            "attention_mask": torch.ones(1, len(input_ids), dtype=torch.long)}}
"""
BOXES = """# one box per token: x0, y0, x1, y1 on a 0-1000 scale relative to the page's body, as
# `layoutja localize` records them for every token of a rendered page
normalized_token_boxes = [[637 + 28 * i, 773, 665 + 28 * i, 782] for i in range(len(tokens))]
# add bounding boxes of cls + sep tokens
bbox = [[0, 0, 0, 0]] + normalized_token_boxes + [[1000, 1000, 1000, 1000]]
encoding["bbox"] = torch.tensor([bbox])
"""
OUTPUTS = {  # by pipeline tag: what the snippet prints
    "token-classification": "print([model.config.id2label[i] for i in "
    "outputs.logits.argmax(-1)[0].tolist()])",
    "fill-mask": "print(outputs.logits.shape)  # (1, tokens, vocabulary)",
    "feature-extraction": "print(outputs.logits.shape)  # (1, tokens): replaced-token logits",
}


@dataclass(frozen=True)
class ModelCard:
    """What a run knows about the models it writes; `write` puts one export's card beside it."""

    recipe: Recipe | None = None  # None: not trained (init-model)
    run: Path | None = None  # the run directory: its metrics.jsonl gives the last metrics
    # export subdirectory ("": any) → the model it started from, as the user named it (a hub
    # name, maybe NAME@REVISION, or a directory)
    base: dict[str, str] = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # DATA_FACTS
    held_out: dict | None = None  # held-out scores; by default the last metrics' eval_*/dev_*
    origin: str = ""  # how the weights were made, when not by training alone

    def write(
        self,
        directory: Path,
        model: PreTrainedModel,
        subdirectory: str = "",
        step: int | None = None,
        location: Path | None = None,
    ) -> None:
        """Write `directory`/README.md for `model` (the run's export `subdirectory`, at `step`),
        after its tokenizer files; its code loads `location` (default: `directory`)."""
        text = self._text(directory, model, subdirectory, step, location or directory)
        (directory / "README.md").write_text(text, encoding="utf-8")

    def _text(
        self,
        directory: Path,
        model: PreTrainedModel,
        subdirectory: str,
        step: int | None,
        location: Path,
    ) -> str:
        what, auto, pipeline = _kind(model)
        base = self.base.get(subdirectory, self.base.get(""))
        sections = [
            self._front_matter(model, base, pipeline),
            f"# {_title(location)}",
            f"{what}, made with layoutja. {_architecture(model)}",
        ]
        if base:
            sections.append(f"It started from {_link(base)}. {self.origin}".rstrip())
        if base and hub_name(base) == PUBLISHED_LAYOUTLM:
            sections.append(PUBLISHED_NOTE)
        if self.recipe is not None:
            sections += self._training(step, base)
        sections += ["## How to use", _usage(directory, model, auto, pipeline, location)]
        return "\n\n".join(sections) + "\n"

    def _front_matter(self, model: PreTrainedModel, base: str | None, pipeline: str) -> str:
        kind = model.config.model_type
        meta: dict = {"language": "ja", "library_name": "transformers"}
        if base and hub_name(base):
            meta["base_model"] = hub_name(base)
        meta["tags"] = ["layoutja", kind] + ([self.recipe.objective] if self.recipe else [])
        meta["tags"].append("layout-aware" if kind in LAYOUT_TYPES else "text-only")
        meta["pipeline_tag"] = pipeline
        fields = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False)
        return f"---\n{fields}{LICENSE}\n---"

    def _training(self, step: int | None, base: str | None) -> list[str]:
        """The recipe, the data, the steps and the metrics."""
        recipe = self.recipe
        command = "finetune" if recipe.objective == "token-classification" else "pretrain"
        unused = ""
        if base and recipe.model:
            unused = f"; its `model` section is unused: the architecture is {base}'s"
        sections = [
            "## Training",
            f"Objective `{recipe.objective}`: {step} steps of a global batch of "
            f"{recipe.schedule.global_batch_size} windows of up to {recipe.data.max_length} "
            f"tokens. The recipe (`layoutja {command} --config recipe.yaml`{unused}):",
            f"```yaml\n{recipe.dump().rstrip()}\n```",
        ]
        if self.data:
            facts = [f"- {label}: {_number(self.data[key])}"
                     for key, label in DATA_FACTS.items() if key in self.data]  # fmt: skip
            sections += ["## Data", "\n".join(facts)]
        last = _last_metrics(self.run)
        held_out = self.held_out
        if held_out is None:
            held_out = {k: v for k, v in last.items() if k.startswith(("eval_", "dev_"))}
        logged = {k: v for k, v in last.items() if k not in held_out and k != "step"}
        metrics = [f"- held out: {_pairs(held_out) if held_out else 'none'}"]
        if logged:
            metrics.insert(0, f"- last logged (step {last.get('step')}): {_pairs(logged)}")
        return sections + ["## Metrics", "\n".join(metrics)]


def _title(location: Path) -> str:
    """The directory's name, with its parent's where the name alone says little."""
    if location.name in ("hf", "generator", "discriminator", "last"):
        return f"{location.parent.name}/{location.name}"
    return location.name


def _kind(model: PreTrainedModel) -> tuple[str, str, str]:
    """(what the model is, the Auto class that loads it, the hub's pipeline tag)."""
    name = type(model).__name__
    if name.endswith("ForTokenClassification"):
        labels = model.config.num_labels
        return (
            f"A token classifier for SHINRA attribute extraction ({labels} B-/I-/O labels)",
            "AutoModelForTokenClassification",
            "token-classification",
        )
    if "Electra" in name and ("MaskedLM" in name or "Generator" in name):
        return "An ELECTRA generator (a masked language model)", "AutoModelForMaskedLM", "fill-mask"
    if "Electra" in name:
        what = "An ELECTRA discriminator (replaced-token detection; fine-tuning takes its body)"
        return what, "AutoModelForPreTraining", "feature-extraction"
    return "A LayoutLM masked language model (MVLM)", "AutoModelForMaskedLM", "fill-mask"


def _architecture(model: PreTrainedModel) -> str:
    c = model.config
    parts = [f"{c.num_hidden_layers} layers", f"hidden size {c.hidden_size}"]
    parts += [f"{c.num_attention_heads} attention heads", f"a vocabulary of {c.vocab_size:,}"]
    if c.model_type in LAYOUT_TYPES:
        parts.append(f"{c.max_2d_position_embeddings} 2-D positions")
    return f"`{type(model).__name__}` (model type `{c.model_type}`): {', '.join(parts)}."


def _usage(directory: Path, model: PreTrainedModel, auto: str, pipeline: str,
           location: Path) -> str:  # fmt: skip
    """How to load and run the model: its tokenizer, then the code (with boxes if it takes
    them)."""
    try:
        config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        dictionary = config["mecab_kwargs"]["mecab_dic"]
    except (OSError, ValueError, KeyError, TypeError):
        dictionary = "unidic_lite"  # BertJapaneseTokenizer's default
    package = DICTIONARY_PACKAGES.get(dictionary, dictionary)
    # layoutja's own classes travel as code beside the weights
    remote = ", trust_remote_code=True" if type(model).__module__.startswith("layoutja") else ""
    code = SNIPPET.format(auto=auto, location=location, remote=remote)
    if model.config.model_type in LAYOUT_TYPES:
        code += BOXES
    code += f"outputs = model(**encoding)\n{OUTPUTS[pipeline]}\n"
    return (
        f"The tokenizer beside the model is MeCab ({dictionary}) + WordPiece "
        f"(`pip install transformers torch fugashi {package}`).\n\n```python\n{code}```"
    )


def _link(name: str) -> str:
    repository = hub_name(name)
    return f"[{name}](https://huggingface.co/{repository})" if repository else f"`{name}`"


def _last_metrics(run: Path | None) -> dict:
    """The last line of the run's metrics.jsonl ({} where there is none yet)."""
    if run is None:
        return {}
    try:
        lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def _number(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pairs(values: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items())
