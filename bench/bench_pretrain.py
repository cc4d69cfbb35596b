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

`--synthetic` replaces the real pages by generated ones of the same shape (about 4,300 tokens a
page in lines of boxes, random ids of a 32,768-token vocabulary): no browser and no
documentation packages needed, e.g. on a GPU machine without network. Speed does not depend on
which ids the tokens have. MFU (on GPUs whose peak is known) counts the same FLOPs per token for
both runs: the encoder and the LM head on the masked 15%, the useful work.
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


def prepare_synthetic(work: Path, pages: int, tokens_per_page: int = 4300) -> tuple[Path, Path]:
    """A 32,768-token vocabulary and localized parts of generated pages (see the docstring)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from layoutja.localize.store import SCHEMA
    from layoutja.text.tokenizer import vocab_sha256

    tokenizer, data = work / "tokenizer", work / "localized"
    tokenizer.mkdir()
    data.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"t{i}" for i in range(32763)]
    (tokenizer / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tokenizer / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "BertJapaneseTokenizer",
                "word_tokenizer_type": "mecab",
                "subword_tokenizer_type": "wordpiece",
                "mecab_kwargs": {"mecab_dic": "unidic_lite"},
            }
        )
    )
    rng = np.random.default_rng(0)
    ids, boxes = [], []
    for _ in range(pages):
        ids.append(rng.integers(5, len(vocab), tokens_per_page, dtype=np.int32).tolist())
        n = np.arange(tokens_per_page)
        x0, y0 = (n % 40) * 24 + 20, (n // 40) * 8 % 980  # 40 tokens a line, 8/1000 a line
        boxes.append(np.stack([x0, y0, x0 + 20, y0 + 7], 1).astype(np.int16).tolist())
    columns = {"source": [f"{i}.html" for i in range(pages)], "input_ids": ids, "bbox": boxes}
    schema = pa.schema([SCHEMA.field(name) for name in columns])
    table = pa.table(columns, schema=schema)
    pq.write_table(table, data / "part-00000.parquet")
    manifest = {"tokenizer": str(tokenizer), "tokenizer_vocab_sha256": vocab_sha256(tokenizer)}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return tokenizer, data


def run_layoutja(args, tokenizer: Path, data: Path, out: Path, **recipe) -> float:
    from layoutja.pretrain.task import pretrain
    from layoutja.training.config import load_config

    settings = {**recipe,
        "schedule.max_steps": args.steps, "schedule.global_batch_size": args.batch,
        "schedule.per_device_batch_size": args.batch, "data.max_length": 512,
        "schedule.warmup_steps": 10, "schedule.mixed_precision": args.precision,
        "checkpoint.log_every": 1, "checkpoint.save_every": 10**9, "data.eval_pages": 0,
        "model": {"hidden_size": args.hidden, "num_hidden_layers": args.layers,
                  "num_attention_heads": args.hidden // 64,
                  "intermediate_size": 4 * args.hidden, "max_position_embeddings": 512},
    }  # fmt: skip
    config = load_config(None, {k: json.dumps(v) for k, v in settings.items()})
    pretrain(config, data, out, tokenizer=str(tokenizer), progress=False)
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    timed = [m["tokens_per_s"] for m in metrics if m["step"] > args.warmup]
    return len(timed) / sum(1 / r for r in timed)  # harmonic mean = total tokens / total time


def mvlm_flops_per_token(args) -> float:
    from transformers import LayoutLMConfig

    from layoutja.training.log import model_flops_per_token

    config = LayoutLMConfig(vocab_size=32768, hidden_size=args.hidden, intermediate_size=4 *
                            args.hidden, num_hidden_layers=args.layers)  # fmt: skip
    return model_flops_per_token(config, 512)


def dense_electra(vocab_size: int, hidden: int, layers: int):
    """The usual HF-based ELECTRA pretraining module: dense generator logits, HF's losses."""
    import torch
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    from layoutja.pretrain.electra import generator_architecture, replaced_tokens, sample_tokens

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

        def forward(self, input_ids, attention_mask, labels, uniforms=None, bbox=None):
            generated = self.gen(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            selected = labels != -100
            with torch.no_grad():
                logits = generated.logits[selected]
                sampled = sample_tokens(logits, torch.rand(len(logits), device=logits.device))
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

    from layoutja.pretrain.order import Corpus, Order
    from layoutja.pretrain.windows import (
        ELECTRA_MASKING,
        MVLM_MASKING,
        SpecialIds,
        collate,
        cut_window,
        localized_files,
        mask_tokens,
        read_pages,
    )
    from layoutja.text.tokenizer import load_vocab

    vocab = load_vocab(tokenizer / "vocab.txt")
    specials = SpecialIds.from_vocab(vocab)
    import numpy as np

    order = Order(Corpus.index(localized_files(data), 510, 128), seed=42, shuffle_parts=64)
    rows = order.corpus.windows[order.rows(np.arange(args.steps * args.batch))]
    pages = {}
    windows = []
    for part, page, start, end in rows.tolist():
        if part not in pages:
            pages[part] = read_pages(order.corpus.files[part])
        _, ids, bbox = pages[part][page]
        windows.append(cut_window(ids, bbox, start, end, specials))
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


def report(name: str, tokens_per_s: float, baseline: float | None = None,
           flops_per_token: float = 0.0) -> None:  # fmt: skip
    import torch

    from layoutja.training.log import peak_flops

    ratio = f"  ({tokens_per_s / baseline:.2f}×)" if baseline else ""
    peak = peak_flops(torch.device("cuda")) if torch.cuda.is_available() else 0.0
    mfu = f"  MFU {tokens_per_s * flops_per_token / peak:.1%}" if peak and flops_per_token else ""
    print(f"{name:38s} {tokens_per_s:10.0f} tokens/s{ratio}{mfu}", flush=True)


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
    parser.add_argument("--synthetic", action="store_true", help="generated pages (see above)")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    try:
        tokenizer, data = (prepare_synthetic if args.synthetic else prepare)(work, args.pages)
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
            flops = mvlm_flops_per_token(args)
            report("HF Trainer + LayoutLMForMaskedLM", baseline, flops_per_token=flops)
            report("layoutja pretrain, MVLM", ours, baseline, flops_per_token=flops)
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
