"""Models and tokenizers named by a local directory or a Hugging Face hub name.

Every option that takes a model or a tokenizer goes through `resolve`: a directory is used as
it is; a hub name (`owner/name`, optionally `owner/name@REVISION`) becomes the local snapshot
that `huggingface_hub` keeps in its cache, downloaded when a hub is reachable and read from the
cache when it is not (`HF_HUB_OFFLINE=1`). From there on every stage works on plain directories
with the real `transformers` loading code.

`tokenizer_for` decides which MeCab tokenizer goes with a model: its own when its files are a
MeCab `BertJapaneseTokenizer`, else the one given with `--tokenizer`, whose vocabulary must be
the model's. The published LayoutLM (jri-advtechlab/layoutlm-wikipedia-ja) ships
`LayoutLMTokenizer` files (no MeCab) although it was trained on cl-tohoku/bert-base-japanese-v2's
MeCab tokenizer with the same vocabulary: it needs `--tokenizer cl-tohoku/bert-base-japanese-v2`,
and what layoutja writes from it carries that tokenizer, never the defective one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from layoutja.common import TOKENIZER_FILES, UserError

# What a model needs beside its weights: configuration, tokenizer, remote code of custom models.
_MODEL_FILES = ["*.json", "*.py", "vocab.txt"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PUBLISHED_LAYOUTLM = "jri-advtechlab/layoutlm-wikipedia-ja"
PUBLISHED_LAYOUTLM_FIX = "--tokenizer cl-tohoku/bert-base-japanese-v2"


def resolve(name_or_path: str | os.PathLike, revision: str | None = None, *,
            what: str = "model", tokenizer_only: bool = False) -> Path:  # fmt: skip
    """The local directory of a model (or, `tokenizer_only`, just its tokenizer files).

    `revision` (a branch, tag or commit) pins a hub name; `NAME@REVISION` does the same inline
    and wins. A local directory is returned as it is (a revision does not apply to it).
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{path}: is a file; a {what} directory or a hub name is expected")
    name = hub_name(name_or_path)
    if name is None:
        raise UserError(f"{name_or_path}: no such {what} directory (nor a hub name owner/name)")
    revision = str(name_or_path).partition("@")[2] or revision
    files = list(TOKENIZER_FILES) if tokenizer_only else _MODEL_FILES
    local = _snapshot(name, revision, files, what)
    if not tokenizer_only and not any(local.glob("*.safetensors")):
        # Weights: safetensors where the repository has them, else the PyTorch file (older
        # repositories such as cl-tohoku's) — never both, never TF/Flax.
        local = _snapshot(name, revision, ["*.safetensors"], what)
        if not any(local.glob("*.safetensors")):
            local = _snapshot(name, revision, ["pytorch_model*.bin"], what)
    return local


def hub_name(name_or_path: str | os.PathLike) -> str | None:
    """The hub repository (`owner/name`) that `name_or_path` names, without its @REVISION; None
    for a local path or what cannot be a repository name."""
    if Path(name_or_path).exists():
        return None
    name = str(name_or_path).partition("@")[0]
    return name if _REPO_ID.fullmatch(name) and not name.startswith(".") else None


def pinned(name_or_path: str | os.PathLike, local: Path) -> tuple[str, str | None]:
    """What names `name_or_path` (resolved to `local`) from any working directory: (the
    absolute path, None) for a local directory; (the hub name, the commit of its snapshot)."""
    name = hub_name(name_or_path)
    if name is None:
        return str(Path(name_or_path).resolve()), None
    return name, local.name if local.parent.name == "snapshots" else None


def _snapshot(name: str, revision: str | None, patterns: list[str], what: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"{name}@{revision}" if revision else name
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except RevisionNotFoundError:
        raise UserError(f"{at}: the hub has no revision {revision!r} of this {what}") from None
    except RepositoryNotFoundError:
        raise UserError(f"{at}: no such {what} on the hub (nor a local directory)") from None
    except LocalEntryNotFoundError:
        cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise UserError(
            f"{at}: not in the Hugging Face cache ({cache}) and the hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if _offline() else "")
            + "; download it once with network access, or give a local directory"
        ) from None
    except Exception as e:  # noqa: BLE001 — connection, permission, ...: one clear line
        raise UserError(f"{at}: the hub could not provide the {what} ({type(e).__name__}: "
                        f"{e})") from None  # fmt: skip


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_tokenizer(name_or_path: str | os.PathLike) -> Path:
    """A tokenizer directory (local, or its hub snapshot)."""
    return resolve(name_or_path, what="tokenizer", tokenizer_only=True)


def _tokenizer_config(directory: Path) -> object | None:
    """The parsed `tokenizer_config.json` of a directory, or None where it cannot be read."""
    try:
        return json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def is_mecab_tokenizer(directory: Path) -> bool:
    """Whether `directory` holds a MeCab + WordPiece BertJapaneseTokenizer (vocab + config)."""
    data = _tokenizer_config(directory)
    return (
        (directory / "vocab.txt").is_file()
        and isinstance(data, dict)
        and data.get("word_tokenizer_type") == "mecab"
    )


def tokenizer_for(model_dir: Path, tokenizer: str | os.PathLike | None, model: str) -> Path:
    """The MeCab tokenizer directory to use with the model in `model_dir` (named `model`).

    With `tokenizer` given, that one (its vocabulary must equal the model's, token for token,
    or have the model's size when the model ships no vocabulary); else the model's own, which
    must be a MeCab BertJapaneseTokenizer: otherwise the error names the fix.
    """
    from layoutja.text.tokenizer import load_vocab

    if tokenizer is None:
        if is_mecab_tokenizer(model_dir):
            return model_dir
        found = _tokenizer_class(model_dir)
        hint = f" (for {PUBLISHED_LAYOUTLM}: {PUBLISHED_LAYOUTLM_FIX})"
        raise UserError(
            f"{model}: its tokenizer is {found}, not a MeCab BertJapaneseTokenizer; give "
            f"--tokenizer NAME_OR_DIR, the MeCab tokenizer it was trained with{hint}"
        )
    chosen = resolve_tokenizer(tokenizer)
    if not is_mecab_tokenizer(chosen):
        raise UserError(f"{tokenizer}: not a MeCab BertJapaneseTokenizer directory "
                        f"({_tokenizer_class(chosen)})")  # fmt: skip
    vocab = load_vocab(chosen / "vocab.txt")
    if (model_dir / "vocab.txt").is_file():
        own = load_vocab(model_dir / "vocab.txt")
        # Ids whose token differs, each counted once, and the ids only one of them has.
        by_id, own_by_id = sorted(vocab, key=vocab.get), sorted(own, key=own.get)
        differ = sum(a != b for a, b in zip(by_id, own_by_id)) + abs(len(own) - len(vocab))
        if differ:
            raise UserError(
                f"{tokenizer}: its vocabulary is not {model}'s ({len(vocab)} vs {len(own)} "
                f"tokens, {differ} differ); the model's embeddings would mean other tokens"
            )
    else:
        size = _vocab_size(model_dir)
        if size is not None and size != len(vocab):
            raise UserError(f"{tokenizer}: {len(vocab)} tokens, {model} has {size} embeddings")
    return chosen


def _tokenizer_class(directory: Path) -> str:
    """How a directory's tokenizer files describe themselves, for error messages."""
    data = _tokenizer_config(directory)
    if data is None:
        return "absent (no tokenizer_config.json)"
    if not isinstance(data, dict):
        return "unreadable"
    kind = data.get("tokenizer_class", "unnamed")
    return f"{kind} (word_tokenizer_type {data.get('word_tokenizer_type', 'basic')!r})"


def _vocab_size(model_dir: Path) -> int | None:
    try:
        return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    except (OSError, KeyError, ValueError, TypeError):
        return None
