"""What the Ta-da engine lacks, for admins (``/tada-admin show``, ``demo add``/``demo key``).

Members are told briefly that something is not set up; the operator's instructions (which
config section to fill in) go to the log and to this record. It is known up front for the
embedded engine (its settings are at hand) and learnt from the engine's answers otherwise:
a demo refused as not configured, an image drawn by the built-in random test model. It is
a diagnostic, kept in this process only: nothing depends on it for correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import discord

if TYPE_CHECKING:
    from engine.settings import EngineSettings

DEMO_TITLES = {"tadz": "Tadz demo", "pudgy": "Pudgy Penguins demo"}
# How the engine's ``model`` field names its built-in random-weight pipeline.
TEST_MODEL_PREFIX = "tiny-random"
IMAGE_MODEL = "image model"


def is_test_model(model: str | None) -> bool:
    """Whether an image's ``model`` field says it came from the random test model."""
    return bool(model) and str(model).startswith(TEST_MODEL_PREFIX)


@dataclass(frozen=True, slots=True)
class Lack:
    """Something the engine cannot do yet: ``what`` for admins, ``detail`` the engine's
    own words (what to configure), ``seen_at`` when it was learnt."""

    what: str
    detail: str
    seen_at: datetime
    # Known from the engine's own settings (embedded): it lasts until the bot restarts with
    # other settings. A lack learnt from an answer may be fixed at any time, unseen.
    from_settings: bool = False


class EngineReadiness:
    """The engine's known gaps; updated as answers come in."""

    def __init__(self) -> None:
        self._lacks: dict[str, Lack] = {}

    def __repr__(self) -> str:
        return f"<EngineReadiness lacks={sorted(self._lacks)}>"

    @classmethod
    def of_embedded(cls, settings: EngineSettings) -> EngineReadiness:
        """What an embedded engine with ``settings`` lacks, known before any request."""
        from engine.image.settings import image_settings

        readiness = cls()
        image = image_settings(settings.image)
        for name in DEMO_TITLES:
            if name not in image.demos:
                readiness.demo_missing(
                    name,
                    f"set [engine.image.demos.{name}] in the engine's config.toml",
                    from_settings=True,
                )
        if image.is_tiny:
            readiness.test_model_seen("no base model: [engine.image] model_path is not set")
        return readiness

    def lacks(self) -> list[Lack]:
        """Every known gap, in a stable order."""
        return [self._lacks[k] for k in sorted(self._lacks)]

    def lacks_demo(self, name: str) -> bool:
        """Whether the engine is known to have no ``name`` demo model."""
        return f"demo:{name}" in self._lacks

    def demo_not_set_up(self, name: str) -> bool:
        """Whether the engine's settings have no ``name`` demo: every request would fail,
        so members are told without one being made."""
        lack = self._lacks.get(f"demo:{name}")
        return lack is not None and lack.from_settings

    def missing_demos(self) -> list[str]:
        """The titles of the demos known to be missing."""
        return [title for name, title in DEMO_TITLES.items() if self.lacks_demo(name)]

    def demo_missing(self, name: str, detail: str, *, from_settings: bool = False) -> None:
        """The engine said (or its settings say) the ``name`` demo is not configured."""
        title = DEMO_TITLES.get(name, f"{name} demo")
        known = self._lacks.get(f"demo:{name}")
        if known is not None and known.from_settings:
            return  # the settings' word stands until a demo image is made
        self._lacks[f"demo:{name}"] = Lack(
            f"{title}: not configured", detail, _now(), from_settings=from_settings
        )

    def demo_works(self, name: str) -> None:
        """A ``name`` demo image was made: whatever was missing is there now."""
        self._lacks.pop(f"demo:{name}", None)

    def test_model_seen(self, detail: str) -> None:
        """An image came from the built-in random test model (noise)."""
        self._lacks[IMAGE_MODEL] = Lack(
            "Image model: the built-in random test model (images are noise)", detail, _now()
        )

    def real_model_seen(self) -> None:
        """An image came from a real base model."""
        self._lacks.pop(IMAGE_MODEL, None)


def _now() -> datetime:
    return discord.utils.utcnow()
