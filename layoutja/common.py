"""What every stage shares: the error the CLI reports, progress, JSONL and YAML reading,
tokenizer files."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class UserError(Exception):
    """Bad input from the user (a file, a directory, an option): printed as one clear line."""


EXIT_PREEMPTED = 75  # a training job stopped by a signal after checkpointing: --resume goes on


class Preempted(Exception):
    """A training job was asked to stop (SIGTERM/SIGUSR1) and has written a checkpoint; the
    command exits with EXIT_PREEMPTED."""


class Progress:
    """Progress of long work: a tqdm bar on a terminal; elsewhere (make, CI, SLURM logs) one plain
    line every `interval` seconds and one at the end, instead of thousands of bar redraws.
    `unit` is singular ("page"); `scale`: the unit is bytes, shown in KiB, MiB, GiB."""

    def __init__(self, total: int, unit: str, desc: str, enabled: bool = True,
                 initial: int = 0, interval: float = 30.0, scale: bool = False):  # fmt: skip
        self.total, self.unit, self.desc, self.n = total, unit, desc, initial
        self.enabled, self.interval, self.scale = enabled, interval, scale
        self.postfix = ""
        self._bar = None
        self._start = self._last = time.monotonic()
        self._initial = initial
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            # tqdm's rate is the recent one (smoothed); bytes in 1024s, as the log lines
            self._bar = tqdm(total=total, initial=initial, unit=unit if scale else f" {unit}s",
                             desc=desc, unit_scale=scale, unit_divisor=1024,
                             dynamic_ncols=True, leave=False)  # fmt: skip

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._line()

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def write(self, message: str) -> None:
        """A message that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _line(self) -> None:
        self._last = now = time.monotonic()
        rate = (self.n - self._initial) / max(now - self._start, 1e-9)
        left = (self.total - self.n) / rate if rate > 0 and self.total else 0
        if self.scale:  # bytes
            done = f"{human_bytes(self.n)}/{human_bytes(self.total)}"
            speed = f"{human_bytes(rate)}/s"
        else:
            done = f"{self.n}/{self.total} {self.unit}s"
            speed = f"{rate:.2f} {self.unit}s/s"
        eta = time.strftime("%H:%M:%S", time.gmtime(left)) if rate > 0 else "?"
        extra = f", {self.postfix}" if self.postfix else ""
        # The rate is the average since this progress began (after any start-up it follows).
        print(f"{self.desc}: {done}, {speed} so far, ETA {eta}{extra}", file=sys.stderr,
              flush=True)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.n > self._initial:
            self._line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def human_bytes(n: float) -> str:
    """A size for people: 512 B, 12.3 KiB, 4.0 MiB, 1.2 GiB."""
    units = ["B", "KiB", "MiB", "GiB"]
    while n >= 1024 and len(units) > 1:
        n, units = n / 1024, units[1:]
    return f"{n:.0f} B" if units[0] == "B" else f"{n:.1f} {units[0]}"


def read_jsonl(
    path: str | Path, parse: Callable[[dict], Any] | None = None, what: str = "a JSON object"
) -> list[Any]:
    """The records of a JSONL file (blank lines skipped), each passed through `parse` if given.

    A file that cannot be read, a line that is not a JSON object, or one `parse` rejects
    (KeyError, TypeError, ValueError) is a UserError naming the file and the line. Lines end only
    at `\\n` (a raw U+2028 inside a JSON string does not split a record).
    """
    out = []
    try:
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8"))
                    if not isinstance(record, dict):
                        raise TypeError(f"a JSON {type(record).__name__}, not an object")
                    out.append(parse(record) if parse else record)
                except KeyError as e:
                    raise UserError(f"{path}: line {number}: not {what} (no {e})") from None
                except (TypeError, ValueError) as e:  # JSON and UTF-8 errors are ValueErrors
                    raise UserError(f"{path}: line {number}: not {what} ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    return out


def read_yaml_mapping(path: str | Path, what: str) -> dict:
    """A YAML file holding one mapping (a recipe, a setting); an empty file is {}. A file that
    cannot be read, is not YAML or is not a mapping is a UserError naming it."""
    import yaml

    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: {what}")
    return values


# The files of a MeCab BertJapaneseTokenizer directory: what every written model carries.
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(src: Path, dst: Path) -> None:
    """Copy the MeCab tokenizer files of `src` into `dst`, so AutoTokenizer loads `dst`.

    The copy's configuration names `BertJapaneseTokenizer`: a MeCab directory whose
    configuration names no class is valid for BertJapaneseTokenizer (many hand-made ones look
    like that), but beside a model AutoTokenizer would take the model type's tokenizer instead
    (BertTokenizer for LayoutLM), which splits Japanese into other tokens.
    """
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    config = dst / "tokenizer_config.json"
    if config.exists():
        values = json.loads(config.read_text(encoding="utf-8"))
        values["tokenizer_class"] = "BertJapaneseTokenizer"
        config.write_text(json.dumps(values, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def model_type(name_or_path: str | Path, what: str = "a model config") -> str:
    """The `model_type` of a model directory or hub name, or a clear error naming it."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(name_or_path)).model_type
    except (OSError, ValueError) as e:
        raise UserError(f"{name_or_path}: cannot load {what}: {e}") from None


def device() -> torch.device:
    """Where inference runs: the GPU when there is one (training: the accelerator's device)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def allow_tf32() -> None:
    """On CUDA, what runs in fp32 (an fp32 run, what autocast leaves in fp32) uses tensor cores."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def inference_precision(where: torch.device, precision: str | None = None):
    """A context for inference in `precision` (fp16 | bf16 | no; None: fp16 on CUDA, fp32 on
    the CPU), under autocast, as training runs; on CUDA what stays fp32 uses TF32."""
    import contextlib

    import torch

    if where.type == "cuda":
        allow_tf32()
    precision = precision or ("fp16" if where.type == "cuda" else "no")
    if precision == "no":
        return contextlib.nullcontext()
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise UserError(f"precision must be fp16, bf16 or no, not {precision!r}")
    return torch.autocast(where.type, dtype=dtypes[precision])
