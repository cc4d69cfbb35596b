"""The localization setting: how pages are rendered and stored, read from `localize/*.yaml`.

The defaults of `LocalizeConfig` are the published setting (localize/published.yaml spells them
out and a test keeps the two equal); they are the only defaults there are. A YAML file may set any
of the fields; an unknown key is refused with the valid names. The command line's `--timeout`,
`--workers` and `--pages-per-part` override the file; the manifest records the result.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layoutja.common import UserError, read_yaml_mapping

NORMALIZATIONS = ("body",)  # relative to document.body's rect, as the published data
# How a page is laid out and measured (see `LocalizeConfig.geometry`).
GEOMETRIES = ("published", "clean")


@dataclass(frozen=True)
class LocalizeConfig:
    """Rendering and storage settings of `layoutja localize`; defaults = the published setting.

    The network-blocking Chromium flags (`browser.NETWORK_FLAGS`) are always added to
    `chromium_flags`: they are not a setting.

    `geometry` says how pages are laid out and measured:
    - "published": as the localizer published with jri-advtechlab/layoutlm-wikipedia-ja did
      (the boxes that model knows): a page taller than the viewport is laid out beside Chromium's
      classic 15 px scrollbar (1265 px wide at 1280), and the body is measured with that
      localizer's form (three inputs) after the page's content, so it is that much taller;
    - "clean": no scrollbar (every page laid out at the full viewport width) and the body as
      the page alone makes it.
    Scrollbars are this setting's: `--hide-scrollbars` is not a `chromium_flags` entry.
    """

    viewport_width: int = 1280
    viewport_height: int = 854
    device_scale_factor: float = 1.0
    chromium_flags: tuple[str, ...] = (
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
    )
    timeout_s: float = 60.0  # seconds to render one page
    normalization: str = "body"
    geometry: str = "published"
    pages_per_part: int = 500
    workers: int = 0  # browser processes; 0: one per CPU core
    # A file is not text, and fails, when its decoded characters include a NUL, or more than
    # these shares of them are U+FFFD (bytes its encoding cannot decode), or of its tokens [UNK].
    max_undecodable: float = 0.01
    max_unknown: float = 0.5

    def __post_init__(self) -> None:
        if self.viewport_width <= 0 or self.viewport_height <= 0:
            raise UserError(f"viewport must be positive, not {self.viewport}")
        if self.device_scale_factor <= 0:
            raise UserError(f"device_scale_factor must be positive: {self.device_scale_factor}")
        if self.timeout_s <= 0:
            raise UserError(f"timeout_s must be positive, not {self.timeout_s}")
        if self.normalization not in NORMALIZATIONS:
            raise UserError(f"normalization must be one of {NORMALIZATIONS}")
        if self.geometry not in GEOMETRIES:
            raise UserError(f"geometry must be one of {GEOMETRIES}, not {self.geometry!r}")
        if "--hide-scrollbars" in self.chromium_flags:
            raise UserError(
                "chromium_flags: --hide-scrollbars is the geometry setting's to decide; "
                "remove it (geometry: clean lays pages out with no scrollbar)"
            )
        if self.pages_per_part < 1 or self.workers < 0:
            raise UserError("pages_per_part must be >= 1 and workers >= 0")
        for name in ("max_undecodable", "max_unknown"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be a share, from 0 to 1, not {getattr(self, name)}")

    @property
    def viewport(self) -> tuple[int, int]:
        return self.viewport_width, self.viewport_height

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the number of CPU cores."""
        return self.workers or os.cpu_count() or 1

    def override(self, **values: Any) -> LocalizeConfig:
        """A copy with the values that are not None (explicit command-line flags) replaced."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    def as_dict(self) -> dict:
        """The settings as plain JSON/YAML values (for the manifest)."""
        return {name: _plain(getattr(self, name)) for name in field_names()}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(LocalizeConfig)]


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _coerce(where: str, name: str, value: Any) -> Any:
    """A YAML value as the type of the field `name` (YAML reads `1` as int, `60.0` as float)."""
    default = getattr(LocalizeConfig(), name)
    if isinstance(default, tuple):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, type(default)) and not isinstance(value, bool):
        return value
    kind = "a list of strings" if isinstance(default, tuple) else type(default).__name__
    raise UserError(f"{where}: {name}: expected {kind}, got {value!r}")


def load_localize_config(path: str | Path | None) -> LocalizeConfig:
    """The published setting, with the values of the YAML file `path` (if given) on top."""
    if path is None:
        return LocalizeConfig()
    values = read_yaml_mapping(path, "a localization setting is a mapping of names to values")
    names = field_names()
    for key in values:
        if key not in names:
            raise UserError(f"{path}: unknown setting {key!r}; valid: {', '.join(names)}")
    try:
        return LocalizeConfig(**{k: _coerce(str(path), k, v) for k, v in values.items()})
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
