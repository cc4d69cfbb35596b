"""Write a tiny, randomly initialized Japanese BERT (BertForPreTraining) with a tokenizer.

It stands in for cl-tohoku/bert-base-japanese-v2 in the demo and tests: the same checkpoint
layout and tokenizer files, a 64-wide, 2-layer model that trains on a CPU in seconds.

    python demo/tiny_bert.py --tokenizer demo-out/tokenizer --out demo-out/bert
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import BertConfig, BertForPreTraining
from transformers.utils import logging as transformers_logging

from layoutja.common import copy_tokenizer
from layoutja.text.tokenizer import load_vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--out", required=True, help="output BERT directory")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    tokenizer, out = Path(args.tokenizer), Path(args.out)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(load_vocab(tokenizer / "vocab.txt")),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 32),
        intermediate_size=2 * args.hidden,
        max_position_embeddings=512,
    )
    transformers_logging.disable_progress_bar()  # writing a tiny model needs no bar
    BertForPreTraining(config).save_pretrained(out)
    copy_tokenizer(tokenizer, out)
    print(f"wrote a tiny BERT ({args.hidden} wide, {args.layers} layers) to {out}")


if __name__ == "__main__":
    main()
