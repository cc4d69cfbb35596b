"""Pretraining speed: layoutja's trainer against a plain Hugging Face Trainer, in one run.

All runs train models of the same size (random init, a 32,768-token vocabulary) on the same
windows of real localized pages (Debian's Japanese documentation, localized first; `make bench`
installs it) with the same batch size and masking. Tokens/s counts non-padding tokens, measured
after `--warmup` steps.

- MVLM: the baseline is `transformers.Trainer` with `LayoutLMForMaskedLM` computing logits for
  every token; layoutja computes them only for the masked ones.
- ELECTRA (`--objectives electra`, hidden divisible by 3): the baseline is `transformers.Trainer`
  with the usual HF-based recipe, `ElectraForMaskedLM(labels=...)` (logits for every token) and
  `ElectraForPreTraining(labels=...)` with shared embeddings, text-only; layoutja runs the
  text-only and the layout-aware form.

    python bench/bench_pretrain.py [--steps 30] [--hidden 256 --layers 4] [--precision bf16]
    python bench/bench_pretrain.py --objectives mvlm,electra --hidden 384
    python bench/bench_pretrain.py --hidden 768 --layers 12 --batch 32 --precision bf16  # GPU
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_localize import real_pages  # noqa: E402


def prepare(work: Path, pages: int) -> tuple[Path, Path]:
    """A 32,768 vocabulary and localized Parquet parts for `pages` real pages."""
    from layoutja.localize.pool import localize_corpus
    from layoutja.text.vocab import VocabConfig, train_vocab

    src = work / "html"
    src.mkdir()
    for i, page in enumerate(real_pages(pages)):
        shutil.copy(page, src / f"{i:05d}.html")
    tokenizer = work / "tokenizer"
    train_vocab([src], tokenizer, VocabConfig(vocab_size=32768, workers=2))
    localize_corpus(str(src), str(tokenizer), work / "localized", workers=2, progress=False)
    return tokenizer, work / "localized"


def run_layoutja(args, tokenizer: Path, data: Path, out: Path, **recipe) -> float:
    from layoutja.pretrain.task import pretrain
    from layoutja.training.config import load_config

    settings = {**recipe,
        "schedule.max_steps": args.steps, "schedule.global_batch_size": args.batch,
        "schedule.per_device_batch_size": args.batch, "data.max_length": 512,
        "schedule.warmup_steps": 10, "schedule.mixed_precision": args.precision,
        "checkpoint.log_every": 1, "checkpoint.save_every": 10**9,
        "model": {"hidden_size": args.hidden, "num_hidden_layers": args.layers,
                  "num_attention_heads": args.hidden // 64,
                  "intermediate_size": 4 * args.hidden, "max_position_embeddings": 512},
    }  # fmt: skip
    config = load_config(None, {k: json.dumps(v) for k, v in settings.items()})
    pretrain(config, data, out, tokenizer=str(tokenizer), progress=False)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [m["tokens_per_s"] for m in metrics if m["step"] > args.warmup]
    return len(timed) / sum(1 / r for r in timed)  # harmonic mean = total tokens / total time


def dense_electra(vocab_size: int, hidden: int, layers: int):
    """The usual HF-based ELECTRA pretraining module: dense generator logits, HF's losses."""
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    from layoutja.pretrain.electra import generator_architecture, gumbel_max_sample, replaced_tokens

    wide = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": hidden // 64,
            "intermediate_size": 4 * hidden, "embedding_size": hidden}  # fmt: skip
    narrow = generator_architecture(wide, 3)

    class DenseElectra(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.disc = ElectraForPreTraining(ElectraConfig(vocab_size=vocab_size, **wide))
            self.gen = ElectraForMaskedLM(ElectraConfig(vocab_size=vocab_size, **narrow))
            self.gen.electra.embeddings = self.disc.electra.embeddings
            self.gen.tie_weights()

        def forward(self, input_ids, attention_mask, labels, bbox=None):
            generated = self.gen(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            selected = labels != -100
            with torch.no_grad():
                sampled = gumbel_max_sample(generated.logits[selected])
            corrupted, replaced = replaced_tokens(input_ids, labels, sampled)
            judged = self.disc(input_ids=corrupted, attention_mask=attention_mask,
                               labels=replaced.long())  # fmt: skip
            return {"loss": generated.loss + 50 * judged.loss}

    return DenseElectra()


def run_hf_trainer(args, tokenizer: Path, data: Path, out: Path, objective: str) -> float:
    import torch
    from transformers import (
        LayoutLMConfig,
        LayoutLMForMaskedLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from layoutja.pretrain.windows import (
        ELECTRA_MASKING,
        MVLM_MASKING,
        SpecialIds,
        WindowStream,
        collate,
        localized_files,
        mask_tokens,
    )
    from layoutja.text.tokenizer import load_vocab

    vocab = load_vocab(tokenizer / "vocab.txt")
    specials = SpecialIds.from_vocab(vocab)
    stream = WindowStream(localized_files(data), specials, seed=42).windows()
    windows = [next(stream)[0] for _ in range(args.steps * args.batch)]
    generator = torch.Generator().manual_seed(0)
    batch_tokens = []  # per batch, in the order the Trainer asks for them

    def collator(batch):
        tensors = collate(batch, specials.pad)
        batch_tokens.append(int(tensors["attention_mask"].sum()))
        masking = ELECTRA_MASKING if objective == "electra" else MVLM_MASKING
        ids, labels = mask_tokens(tensors["input_ids"], specials, len(vocab), generator, masking)
        return {**tensors, "input_ids": ids, "labels": labels}

    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()

    torch.manual_seed(0)
    if objective == "electra":
        model = dense_electra(len(vocab), args.hidden, args.layers)
    else:
        model = LayoutLMForMaskedLM(
            LayoutLMConfig(
                vocab_size=len(vocab), hidden_size=args.hidden, num_hidden_layers=args.layers,
                num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden,
            )
        )  # fmt: skip
    training = TrainingArguments(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch,
        learning_rate=5e-5, warmup_steps=10, save_strategy="no", report_to=[],
        logging_steps=10**9, dataloader_num_workers=0, remove_unused_columns=False,
        bf16=args.precision == "bf16", fp16=args.precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=training, train_dataset=windows, data_collator=collator,
        callbacks=[Clock()],
    )  # fmt: skip
    trainer.train()
    # The dataloader prepares a batch ahead of the step that uses it, so tokens are counted per
    # batch and summed over the timed steps' own batches.
    tokens = sum(batch_tokens[args.warmup : args.steps])
    return tokens / (marks[args.steps] - marks[args.warmup])


def report(name: str, tokens_per_s: float, baseline: float | None = None) -> None:
    ratio = f"  ({tokens_per_s / baseline:.2f}×)" if baseline else ""
    print(f"{name:38s} {tokens_per_s:10.0f} tokens/s{ratio}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=120)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--objectives", default="mvlm", help="mvlm, electra or mvlm,electra")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    try:
        tokenizer, data = prepare(work, args.pages)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
        print(
            f"hidden {args.hidden}, {args.layers} layers, vocab 32768, batch "
            f"{args.batch} × ≤512 tokens, {args.steps} steps ({args.warmup} untimed), "
            f"{args.precision}, {device}, {torch.get_num_threads()} threads"
        )
        objectives = args.objectives.split(",")
        if "mvlm" in objectives:
            baseline = run_hf_trainer(args, tokenizer, data, work / "hf", "mvlm")
            ours = run_layoutja(args, tokenizer, data, work / "mvlm")
            report("HF Trainer + LayoutLMForMaskedLM", baseline)
            report("layoutja pretrain, MVLM", ours, baseline)
        if "electra" in objectives:
            baseline = run_hf_trainer(args, tokenizer, data, work / "hf-electra", "electra")
            electra = {"objective": "electra", "optimizer.weight_decay": 0.01}
            text = run_layoutja(args, tokenizer, data, work / "text",
                                **electra, **{"electra.layout": False})  # fmt: skip
            layout = run_layoutja(args, tokenizer, data, work / "layout",
                                  **electra, **{"electra.layout": True})  # fmt: skip
            report("HF Trainer + dense HF ELECTRA (text)", baseline)
            report("layoutja pretrain, ELECTRA text-only", text, baseline)
            report("layoutja pretrain, ELECTRA layout", layout, baseline)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
