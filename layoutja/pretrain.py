"""Pretraining (MVLM or ELECTRA): build → batches → step → log → checkpoint → export.

The objective comes from the recipe: `mvlm` trains a LayoutLM masked LM on localized pages
(layoutja.mvlm); `electra` a generator and a discriminator (layoutja.electra), layout-aware on
localized pages or text-only on localized pages or a plain-text corpus (layoutja.textcorpus).

Runs as it is on one CPU or GPU, or under `accelerate launch`/`torchrun` on many GPUs and nodes
(shared machinery in layoutja.trainer). A step is exactly reproducible: masking and dropout are
seeded from (seed, step, rank) and the data position is (epoch, windows taken), so a run that is
stopped and resumed takes the same steps as one that was not.

Output directory:
    config.json, model.safetensors, vocab.txt, ...  the exported MVLM model (at the end), or
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
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import yaml
from torch.utils.data import DataLoader

from layoutja import trainer
from layoutja.config import TrainConfig
from layoutja.data import (
    ELECTRA_MASKING,
    MVLM_MASKING,
    MaskedBatches,
    SpecialIds,
    WindowStream,
    localized_files,
    step_seed,
)
from layoutja.electra import ElectraPretraining, new_electra
from layoutja.errors import UserError
from layoutja.mvlm import MVLMModel, load_layoutlm, new_layoutlm
from layoutja.textcorpus import pack_text_corpus, wait_until_packed
from layoutja.tokenizer import load_vocab, resolve_tokenizer_dir, vocab_sha256
from layoutja.trainlog import MetricsLog, peak_flops


def data_tokenizer(data: Path, init: str | None, tokenizer: str | None) -> Path:
    """The tokenizer the data was made with; the model's vocabulary must be the same."""
    manifests = sorted(data.glob("manifest*.json")) if data.is_dir() else []
    manifest = json.loads(manifests[0].read_text(encoding="utf-8")) if manifests else {}
    candidates = [c for c in (tokenizer, init, manifest.get("tokenizer")) if c]
    path = next((Path(c) for c in candidates if (Path(c) / "vocab.txt").exists()), None)
    if path is None:
        if not candidates:
            raise UserError(f"{data}: no manifest names its tokenizer; give --tokenizer")
        path = resolve_tokenizer_dir(candidates[0])
    expected = manifest.get("tokenizer_vocab_sha256")
    if expected and vocab_sha256(path) != expected:
        raise UserError(
            f"{path}: not the vocabulary {data} was localized with (vocab.txt hashes differ)"
        )
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
    config: TrainConfig, vocab_size: int, tokenizer_dir: Path, init: str | None
) -> MVLMModel | ElectraPretraining:
    """The training module of the recipe's objective: its forward returns the loss(es), its
    `exports()` the Hugging Face models to save."""
    if config.objective == "electra":
        if init:
            raise UserError("ELECTRA trains from scratch: give --tokenizer DIR, not --init")
        if not config.model:
            raise UserError("an ELECTRA recipe needs a model section (the discriminator's size)")
        return new_electra(vocab_size, config.model, layout=config.layout,
                           factor=config.generator_factor,
                           discriminator_weight=config.discriminator_weight)  # fmt: skip
    if init:
        mlm = load_layoutlm(init, tokenizer_dir)
    elif config.model:
        mlm = new_layoutlm(vocab_size, config.model)
    else:
        raise UserError("give --init MODEL (a BERT or LayoutLM), or a recipe with a model section")
    if mlm.config.vocab_size != vocab_size:
        raise UserError(f"{tokenizer_dir}: {vocab_size} tokens, the model has "
                        f"{mlm.config.vocab_size}")  # fmt: skip
    return MVLMModel(mlm)


def pretrain(
    config: TrainConfig,
    data: str | Path,
    out: str | Path,
    *,
    init: str | None = None,
    tokenizer: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Pretrain on localized pages (or, for text-only ELECTRA, a plain-text corpus); returns
    the last logged metrics (main process)."""
    from tqdm import tqdm

    data, out = Path(data), Path(out)
    if config.objective not in ("mvlm", "electra"):
        raise UserError(f"objective {config.objective!r}: layoutja pretrain trains mvlm or electra")
    boxes = config.objective == "mvlm" or config.layout
    accelerator = trainer.make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    accumulation = trainer.accumulation_steps(config, world)

    # --- build ---------------------------------------------------------------------------
    text = is_text_corpus(data)
    if text and boxes:
        raise UserError(
            f"{data}: plain text has no boxes; it trains text-only ELECTRA "
            "(objective: electra, layout: false), or localize pages first"
        )
    if text and not tokenizer:
        raise UserError(f"{data}: plain text; give --tokenizer DIR (its vocabulary)")
    tokenizer_dir = data_tokenizer(data, init, tokenizer)
    vocab = load_vocab(tokenizer_dir / "vocab.txt")
    specials = SpecialIds.from_vocab(vocab)
    model = build_model(config, len(vocab), tokenizer_dir, init)
    positions = min(m.config.max_position_embeddings for m in model.exports().values())
    if config.max_length > positions:
        raise UserError(f"max_length {config.max_length} > the model's {positions} positions")
    if text:  # tokenized once, by the main process; the other ranks wait for it
        packed = out / "packed"
        if accelerator.is_main_process:
            pack_text_corpus(data, tokenizer_dir, packed, config.max_length - 2,
                             workers=len(os.sched_getaffinity(0)), progress=progress)  # fmt: skip
        else:
            wait_until_packed(data, tokenizer_dir, packed, config.max_length - 2)
        data = packed
    files = localized_files(data)
    if boxes and "bbox" not in pq.read_schema(files[0]).names:
        raise UserError(f"{data}: tokens without boxes (packed text): text-only ELECTRA only")
    flops_per_token = model.flops_per_token(config.max_length)
    optimizer, scheduler = trainer.build_optimizer(model, config, config.max_steps)
    model, optimizer = trainer.prepare(accelerator, model, optimizer, scheduler)
    # The data position is per rank: ranks cross an epoch boundary at different steps when the
    # windows do not divide evenly among them.
    state = {"step": 0, "skipped": 0, "positions": [[0, 0]] * world, "world": world,
             "per_device_batch_size": config.per_device_batch_size,
             "data": data_fingerprint(files)}  # fmt: skip
    saved = trainer.resume(accelerator, out, resume)
    if saved.get("data", state["data"]) != state["data"] and accelerator.is_main_process:
        print(f"warning: {data} changed since the checkpoint (parts added, removed or "
              "rewritten): training goes on from the saved position in the new data, which "
              "is not where the interrupted run would have gone", file=sys.stderr)  # fmt: skip
    for key in ("world", "per_device_batch_size"):
        if saved and saved.get(key) != state[key]:
            raise UserError(
                f"{out}: the checkpoint was made with {key} {saved.get(key)}, this run has "
                f"{state[key]}; resume with the same setup"
            )
    state.update({**saved, "data": state["data"]})
    epoch, taken = state["positions"][rank]
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        recipe = yaml.safe_dump(dataclasses.asdict(config), allow_unicode=True)
        (out / "recipe.yaml").write_text(recipe, encoding="utf-8")

    # --- batches -------------------------------------------------------------------------
    stream = WindowStream(
        files,
        specials,
        seed=config.seed,
        rank=rank,
        world=world,
        max_length=config.max_length,
        margin=config.margin,
    )
    masking = ELECTRA_MASKING if config.objective == "electra" else MVLM_MASKING
    masking = dataclasses.replace(masking, probability=config.mask_probability)
    batches = MaskedBatches(stream, (epoch, taken), state["step"], accumulation,
                            config.per_device_batch_size, len(vocab), masking,
                            config.max_length, boxes=boxes)  # fmt: skip
    workers = config.data_workers
    loader = iter(DataLoader(batches, batch_size=None, num_workers=workers,
                             prefetch_factor=4 * accumulation if workers else None))  # fmt: skip
    position = [epoch, taken]

    def micro_batches() -> tuple[list[dict], int]:
        """This step's masked micro-batches and their real (non-padding) token count."""
        step_batches = []
        for _ in range(accumulation):
            batch, (position[0], position[1]) = next(loader)
            step_batches.append(batch)
        return step_batches, sum(int(b["attention_mask"].sum()) for b in step_batches)

    # --- steps, logs, checkpoints ----------------------------------------------------------
    log = MetricsLog(out, enabled=accelerator.is_main_process, resume_step=state["step"])
    peak = peak_flops(accelerator.device) * world
    bar = tqdm(
        total=config.max_steps,
        initial=state["step"],
        unit="step",
        disable=not (progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    model.train()
    tokens, clock, last = 0, time.perf_counter(), {}
    while state["step"] < config.max_steps:
        step = state["step"]
        torch.manual_seed(step_seed(config.seed, step, rank))  # dropout: same on resume
        step_batches, step_tokens = micro_batches()
        tokens += step_tokens * world
        learning_rate = scheduler.get_last_lr()[0]  # the rate this step uses
        losses, skipped = trainer.optimizer_step(
            accelerator,
            model,
            optimizer,
            scheduler,
            step_batches,
            config.max_grad_norm,
            out,
            step + 1,
        )
        state["step"], state["skipped"] = step + 1, state["skipped"] + skipped
        bar.update()
        if state["step"] % config.log_every == 0 or state["step"] == config.max_steps:
            tokens_per_s = tokens / (time.perf_counter() - clock)
            last = {
                "step": state["step"],
                **{name: round(value, 5) for name, value in losses.items()},
                "learning_rate": learning_rate,
                "tokens_per_s": round(tokens_per_s, 1),
                "skipped_steps": state["skipped"],
                "epoch": position[0],
            }
            if peak:
                last["mfu"] = round(tokens_per_s * flops_per_token / peak, 4)
            log.write(last)
            bar.set_postfix(loss=f"{losses['loss']:.4f}", refresh=False)
            tokens, clock = 0, time.perf_counter()
        if state["step"] % config.save_every == 0 or state["step"] == config.max_steps:
            here = torch.tensor(position, device=accelerator.device)
            state["positions"] = accelerator.gather(here).view(world, 2).tolist()
            trainer.save_checkpoint(accelerator, out, dict(state), config.keep_checkpoints)
    bar.close()
    log.close()

    trainer.export(accelerator, accelerator.unwrap_model(model).exports(), tokenizer_dir, out)
    return last if accelerator.is_main_process else {}
