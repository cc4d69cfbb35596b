"""A toy training job for the trainer's job-level properties, run under `torchrun` by the tests:
a linear model on synthetic batches, with an evaluation that can be slow on chosen ranks.

    torchrun --nproc_per_node 2 tests/toy_job.py OUT --eval-seconds 4 --slow-ranks 0,1 \
        --timeout-minutes 0.05
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from layoutja.training.config import load_config
from layoutja.training.trainer import Trainer


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x, attention_mask, denominators=None) -> dict:
        total = self.linear(x.float()).pow(2).sum()
        return {"loss": total / (denominators or {}).get("rows", len(x))}

    @staticmethod
    def token_counts(batch: dict) -> dict[str, int]:
        return {"rows": len(batch["x"])}


class ToyTask:
    def __init__(self, trainer: Trainer, args: argparse.Namespace):
        self.trainer, self.args = trainer, args
        self.model, self.max_steps = Toy(), args.steps
        self.tokenizer_dir, self.fingerprint, self.card = Path(args.out), "toy", None

    def batches(self, step: int):
        while True:
            g = torch.Generator().manual_seed(step * 100 + self.trainer.rank)
            yield [{"x": torch.rand(2, 4, generator=g), "attention_mask": torch.ones(2, 1)}]
            step += 1

    def epoch(self, step: int) -> float:
        return float(step)

    def exports(self, model):
        return {}

    def flops_per_token(self) -> float:
        return 0.0

    def evaluates(self, step: int) -> bool:
        return step == 2

    def evaluate(self, model, step: int) -> dict:
        if self.trainer.rank in self.args.slow_ranks:
            time.sleep(self.args.eval_seconds)
        return {"evaluated_by": self.trainer.rank}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--eval-seconds", type=float, default=0.0)
    parser.add_argument(
        "--slow-ranks", type=lambda s: {int(r) for r in s.split(",")}, default=set()
    )
    parser.add_argument("--timeout-minutes", default="60")
    args = parser.parse_args()
    recipe = load_config(
        None,
        {
            "schedule.global_batch_size": "2",
            "schedule.per_device_batch_size": "1",
            "schedule.mixed_precision": "no",
            "schedule.timeout_minutes": args.timeout_minutes,
        },
    )
    trainer = Trainer(recipe, args.out, progress=False)

    # When each rank fetched (as a hub download would): the main process first, then the others.
    def fetch() -> list[float]:
        start = time.time()
        time.sleep(0.5)
        return [start, time.time()]

    fetched = trainer.main_first(fetch)
    (Path(args.out) / f"fetched-{trainer.rank}.json").write_text(json.dumps(fetched))
    trainer.fit(ToyTask(trainer, args))


if __name__ == "__main__":
    main()
