"""Training logs: `metrics.jsonl` and TensorBoard in the output directory, and FLOP accounting."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from layoutja.localize.store import atomic_write

# Dense bf16/fp16 tensor-core peak per GPU, for model FLOP utilization (MFU).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


class MetricsLog:
    """One JSON line per logged step, mirrored to TensorBoard; main process only."""

    def __init__(self, out: Path, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop lines a killed run wrote after its last checkpoint
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line torn by a kill
            text = "".join(f"{line}\n" for line in kept)  # all or nothing, even if killed now
            atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step + 1)

    def write(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        for key, value in metrics.items():
            if key != "step" and isinstance(value, int | float):
                group = "eval" if key.startswith(("eval_", "dev_")) else "train"
                self.writer.add_scalar(f"{group}/{key}", value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.writer.close()


def model_flops_per_token(config, seq_len: int, mask_fraction: float = 0.15) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward) of a BERT-style encoder.

    Per layer and token, forward: 2 × (4H² + 2HI) for the matrix multiplications and 4 × seq × H
    for attention scores and values; the MLM head (H → E → vocabulary, E the embedding width:
    H except in an ELECTRA generator) runs only on the masked fraction.
    """
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    e = getattr(config, "embedding_size", h)
    encoder = layers * (2 * (4 * h * h + 2 * h * i) + 4 * seq_len * h)
    head = mask_fraction * 2 * (h * e + e * config.vocab_size)
    return 3 * (encoder + head)


def peak_flops(device: torch.device) -> float:
    """The accelerator's peak FLOP/s, or 0 where unknown (CPU): then no MFU is reported."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), 0.0)
