"""The pretraining task (MVLM or ELECTRA), trained by the one Trainer.

The objective comes from the recipe: `mvlm` trains a LayoutLM masked LM on localized pages
(`mvlm`); `electra` a generator and a discriminator (`electra`), layout-aware on localized pages
or text-only on localized pages or a plain-text corpus (`textcorpus`). A step is exactly
reproducible: its windows follow from the step in the global order (`order`), their masks from
their positions in it, dropout from (seed, step, rank); so a run that is stopped and resumed,
on as many processes or not, takes the same steps as one that was not.

Output directory:
    config.json, model.safetensors, vocab.txt, ...  the exported MVLM model (at the end) with
    README.md                                        its model card, or
    generator/, discriminator/                       the exported ELECTRA models
    packed/                                          a plain-text corpus, tokenized and packed
    checkpoints/step-0000100/   model, optimizer, scheduler, scaler, RNG (accelerate) + position
    metrics.jsonl, tensorboard/, recipe.yaml
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import PreTrainedModel

from layoutja.common import UserError
from layoutja.hub import is_mecab_tokenizer, resolve, resolve_tokenizer, tokenizer_for
from layoutja.localize.manifest import (
    check_vocabulary,
    manifest_facts,
    read_manifests,
    tokenizer_name,
)
from layoutja.localize.parts import page_lengths, part_columns, read_part
from layoutja.pretrain.electra import ElectraPretraining, load_electra, new_electra
from layoutja.pretrain.from_electra import published_electra
from layoutja.pretrain.mvlm import MVLMModel, load_layoutlm, new_layoutlm
from layoutja.pretrain.order import Corpus, Order
from layoutja.pretrain.textcorpus import pack_text_corpus, wait_until_packed
from layoutja.pretrain.windows import (
    ELECTRA_MASKING,
    MVLM_MASKING,
    Batcher,
    MaskedBatches,
    SpecialIds,
    fixed_batches,
    localized_files,
    raise_failure,
)
from layoutja.text.tokenizer import load_vocab
from layoutja.training.card import ModelCard
from layoutja.training.config import Recipe
from layoutja.training.job import WorkerSignals, removed_unless_trained
from layoutja.training.trainer import Trainer


def data_tokenizer(data: Path, init: Path | None, init_name: str | None,
                   tokenizer: str | None) -> Path:  # fmt: skip
    """The MeCab tokenizer to train with: `tokenizer`, else the initial model's own (a plain
    text corpus names none), else the one the data was localized with; the data's vocabulary
    must be the same."""
    manifests = read_manifests(data)
    named_in = next(iter(manifests), None)  # the first record's file
    localized_with = tokenizer_name(manifests[named_in]) if named_in else None
    own = init is not None and is_mecab_tokenizer(init)
    # None given, nor in the initial model (e.g. the published LayoutLM's): the data's.
    from_data = tokenizer is None and not own and localized_with is not None
    if from_data:
        tokenizer = localized_with
    elif tokenizer is None and init is None:
        raise UserError(f"{data}: names no tokenizer (no manifest); give --tokenizer "
                        "NAME_OR_DIR, or --init a model that has its own")  # fmt: skip
    try:
        if init is not None:
            path = tokenizer_for(init, tokenizer, init_name or str(init))
        else:
            path = resolve_tokenizer(tokenizer)
    except UserError as e:
        if not from_data:
            raise
        raise UserError(f"{e} (the tokenizer the pages were localized with, named in "
                        f"{named_in}; give --tokenizer NAME_OR_DIR)") from None  # fmt: skip
    check_vocabulary(data, path, tokenizer or init_name or str(init))
    return path


def data_fingerprint(files: list[Path]) -> str:
    """Names and sizes of the data parts: a resume checks it still reads the same data."""
    listing = json.dumps([[f.name, f.stat().st_size] for f in files])
    return hashlib.sha256(listing.encode()).hexdigest()[:16]


def is_text_corpus(data: Path) -> bool:
    """A plain-text corpus: a text file, or a directory of .txt files without localized parts."""
    if not data.exists():
        raise UserError(f"{data}: no such file or directory")
    if data.is_dir():
        return not any(data.glob("part-*.parquet")) and any(data.rglob("*.txt"))
    return data.suffix != ".parquet"


def build_model(
    recipe: Recipe,
    specials: SpecialIds,
    vocab_size: int,
    init: Path | None,
    report: bool = True,
    generator: Path | None = None,
) -> MVLMModel | ElectraPretraining:
    """The training module of the recipe's objective, new or from `init` (MVLM: a BERT or a
    LayoutLM; ELECTRA: an export with generator/ and discriminator/, or with `generator` a
    published discriminator and its generator): its forward returns the loss(es), its
    `exports()` the Hugging Face models to save. `report`: print what a conversion copied."""
    if recipe.objective == "electra":
        e = recipe.electra
        if init and generator:
            model = published_electra(init, generator, layout=e.layout,
                                      pad_token_id=specials.pad, report=report,
                                      discriminator_weight=e.discriminator_weight)  # fmt: skip
        elif init:
            model = load_electra(init, layout=e.layout, pad_token_id=specials.pad,
                                 discriminator_weight=e.discriminator_weight)  # fmt: skip
        elif not recipe.model:
            raise UserError("an ELECTRA recipe needs a model section (the discriminator's size)")
        else:
            model = new_electra(vocab_size, recipe.model, layout=e.layout,
                                factor=e.generator_factor, pad_token_id=specials.pad,
                                discriminator_weight=e.discriminator_weight)  # fmt: skip
        sizes = {m.config.vocab_size for m in model.exports().values()}
    else:
        if init:
            mlm = load_layoutlm(init, specials.pad, report)
        elif recipe.model:
            mlm = new_layoutlm(vocab_size, recipe.model, specials.pad)
        else:
            raise UserError("give --init MODEL (a BERT or LayoutLM), or a recipe with a model "
                            "section")  # fmt: skip
        model, sizes = MVLMModel(mlm), {mlm.config.vocab_size}
    if sizes != {vocab_size}:
        raise UserError(f"the tokenizer has {vocab_size} tokens, the model {sorted(sizes)}")
    return model


class PretrainTask:
    """MVLM or ELECTRA on localized pages (or a packed text corpus): windows in the global
    order, read part by part, masked in DataLoader workers while the model trains."""

    def __init__(
        self,
        recipe: Recipe,
        trainer: Trainer,
        data: Path,
        out: Path,
        *,
        init: str | None = None,
        init_generator: str | None = None,
        tokenizer: str | None = None,
        revision: str | None = None,
    ):
        if recipe.objective not in ("mvlm", "electra"):
            raise UserError(
                f"objective {recipe.objective!r}: layoutja pretrain trains mvlm or electra"
            )
        self.recipe, self.trainer = recipe, trainer
        self.boxes = recipe.objective == "mvlm" or recipe.electra.layout
        text = is_text_corpus(data)
        if text and self.boxes:
            raise UserError(
                f"{data}: plain text has no boxes; it trains text-only ELECTRA "
                "(objective: electra, electra.layout: false), or localize pages first"
            )
        if init_generator and not (init and recipe.objective == "electra"):
            raise UserError("--init-generator NAME goes with --init NAME (its discriminator) "
                            "in an ELECTRA recipe")  # fmt: skip
        init_dir = trainer.main_first(lambda: resolve(init, revision)) if init else None
        generator = trainer.main_first(lambda: resolve(init_generator)) if init_generator else None
        own = init_dir
        if init_dir and recipe.objective == "electra" and not generator:
            own = init_dir / "discriminator"  # an export: its tokenizer is beside each model
        self.tokenizer_dir = data_tokenizer(data, own, init, tokenizer)
        if generator:  # the generator's vocabulary must be the discriminator's
            tokenizer_for(generator, str(self.tokenizer_dir), init_generator)
        vocab = load_vocab(self.tokenizer_dir / "vocab.txt")
        self.vocab_size, self.specials = len(vocab), SpecialIds.from_vocab(vocab)
        self.model = build_model(recipe, self.specials, len(vocab), init_dir, trainer.is_main,
                                 generator)  # fmt: skip
        positions = min(m.config.max_position_embeddings for m in self.model.exports().values())
        max_length = recipe.data.max_length
        if max_length > positions:
            raise UserError(f"data.max_length {max_length} > the model's {positions} positions")
        facts = manifest_facts(data)  # for the model cards
        if text:  # tokenized once, by the main process; the other ranks wait for it
            packed = out / "packed"
            if trainer.is_main:
                pack_text_corpus(
                    data,
                    self.tokenizer_dir,
                    packed,
                    max_length - 2,
                    workers=len(os.sched_getaffinity(0)),
                    progress=trainer.progress,
                )
            else:
                wait_until_packed(data, self.tokenizer_dir, packed, max_length - 2)
            data, facts = packed, {**manifest_facts(packed), "source": str(data)}
        base = {"": init} if init else {}  # what each export started from, for its card
        if init_generator:
            base["generator"] = init_generator
        self.card = ModelCard(recipe, out, base, facts)
        self.files = localized_files(data)
        if self.boxes and "bbox" not in part_columns(self.files[0]):
            raise UserError(f"{data}: tokens without boxes (packed text): text-only ELECTRA only")
        self.fingerprint = data_fingerprint(self.files)
        self.max_steps = recipe.schedule.max_steps
        masking = ELECTRA_MASKING if recipe.objective == "electra" else MVLM_MASKING
        masking = dataclasses.replace(masking, probability=recipe.data.mask_probability)
        self.batcher = Batcher(self.specials, self.vocab_size, masking, max_length, self.boxes,
                               uniforms=recipe.objective == "electra")  # fmt: skip
        # Every rank reads the page lengths of a share of the parts; all get the whole index.
        corpus = Corpus.index(self.files, max_length - 2, recipe.data.margin, self._lengths)
        corpus, self.eval_batches = self._hold_out(corpus, out)
        grouped = recipe.schedule.global_batch_size if recipe.data.group_by_length else 0
        self.order = Order(corpus, recipe.schedule.seed, recipe.data.shuffle_parts, grouped)

    def _hold_out(self, corpus: Corpus, out: Path) -> tuple[Corpus, list[dict]]:
        """The corpus without `data.eval_pages` pages chosen by the seed, and this rank's share
        of their windows as batches with fixed masks; the main process lists the pages in
        OUT/eval_pages.txt."""
        wanted, seed = self.recipe.data.eval_pages, self.recipe.schedule.seed
        if not wanted:
            return corpus, []
        pages = corpus.pages()
        if wanted >= len(pages):
            raise UserError(f"data.eval_pages {wanted}: the data has only {len(pages)} pages; "
                            "hold out fewer (0: no held-out evaluation)")  # fmt: skip
        chosen = np.random.default_rng([seed, 1]).choice(len(pages), wanted, replace=False)
        held_pages = pages[np.sort(chosen)]
        corpus, held = corpus.without(held_pages)
        if self.trainer.is_main:
            sources = []
            for part in np.unique(held_pages[:, 0]).tolist():  # each part's column read once
                column = read_part(self.files[part], ["source"]).column(0)
                sources += column.take(held_pages[held_pages[:, 0] == part, 1]).to_pylist()
            (out / "eval_pages.txt").write_text("".join(f"{s}\n" for s in sources), "utf-8")
        mine = np.arange(self.trainer.rank, len(held), self.trainer.world)
        per_device = self.recipe.schedule.per_device_batch_size
        return corpus, fixed_batches(self.files, held, mine, self.batcher, per_device, seed)

    def _lengths(self, files: list[Path]) -> list:
        rank, world = self.trainer.rank, self.trainer.world
        mine = [(i, page_lengths(f)) for i, f in enumerate(files) if i % world == rank]
        found = gather_object(mine) if world > 1 else mine
        return [lengths for _, lengths in sorted(found, key=lambda item: item[0])]

    def batches(self, step: int) -> Iterator[list[dict]]:
        recipe, trainer = self.recipe, self.trainer
        accumulation = trainer.accumulation
        masked = MaskedBatches(
            self.order,
            self.batcher,
            rank=trainer.rank,
            world=trainer.world,
            start_step=step,
            global_batch=recipe.schedule.global_batch_size,
            per_device=recipe.schedule.per_device_batch_size,
        )
        workers = recipe.data.data_workers
        # Started here, before the trainer seeds its first step: starting a DataLoader draws
        # from torch's RNG, which would shift dropout in a resumed run.
        loader = iter(
            DataLoader(
                masked,
                batch_size=None,
                num_workers=workers,
                prefetch_factor=4 * accumulation if workers else None,
                pin_memory=recipe.data.pin_memory and torch.cuda.is_available(),
                worker_init_fn=WorkerSignals(),
            )
        )

        def steps() -> Iterator[list[dict]]:
            while True:  # closing it frees the loader, whose workers then stop
                yield [raise_failure(next(loader)) for _ in range(accumulation)]

        return steps()

    def epoch(self, step: int) -> float:
        return step * self.recipe.schedule.global_batch_size / len(self.order.corpus)

    def exports(self, model: torch.nn.Module) -> dict[str, PreTrainedModel]:
        return model.exports()

    def flops_per_token(self) -> float:
        return self.model.flops_per_token(self.recipe.data.max_length)

    def evaluates(self, step: int) -> bool:
        every = self.recipe.checkpoint.eval_every
        return bool(self.recipe.data.eval_pages) and (step % every == 0 or step == self.max_steps)

    def evaluate(self, model: torch.nn.Module, step: int) -> dict:
        """The held-out metrics (the model's METRICS), and for a layout-aware model the same
        with every box set to 0,0,0,0 (`..._without_layout`): same windows, same masks, so the
        gap is what the layout is worth. Each rank scores its share; the sums are reduced."""
        accelerator = self.trainer.accelerator
        variants = ("", "_without_layout") if self.boxes else ("",)
        sums: dict[str, torch.Tensor] = {}
        model.eval()
        with torch.no_grad(), accelerator.autocast():
            for batch in self.eval_batches:
                inputs = {k: v.to(accelerator.device) for k, v in batch.items()}
                for suffix in variants:
                    boxes = {"bbox": torch.zeros_like(inputs["bbox"])} if suffix else {}
                    for name, value in model.scores(**{**inputs, **boxes}).items():
                        sums[name + suffix] = sums.get(name + suffix, 0) + value.float()
        model.train()
        parts = sorted({name for pair in model.METRICS.values() for name in pair})
        names = [part + suffix for suffix in variants for part in parts]
        device = accelerator.device
        local = torch.stack([torch.as_tensor(sums.get(n, 0.0), device=device) for n in names])
        total = dict(zip(names, accelerator.reduce(local, "sum").tolist(), strict=True))
        return {f"{metric}{s}": round(total[a + s] / max(total[b + s], 1), 5)
                for s in variants for metric, (a, b) in model.METRICS.items()}  # fmt: skip


def pretrain(
    recipe: Recipe,
    data: str | Path,
    out: str | Path,
    *,
    init: str | None = None,
    init_generator: str | None = None,
    tokenizer: str | None = None,
    revision: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Pretrain on localized pages (or, for text-only ELECTRA, a plain-text corpus), from
    scratch or from `init` (a directory or hub name at `revision`; with `init_generator`, a
    published ELECTRA discriminator and its generator); returns the last logged metrics (main
    process)."""
    with removed_unless_trained(Path(out)):
        trainer = Trainer(recipe, out, resume=resume, progress=progress)
        task = PretrainTask(recipe, trainer, Path(data), Path(out), init=init,
                            init_generator=init_generator, tokenizer=tokenizer,
                            revision=revision)  # fmt: skip
        return trainer.fit(task)
