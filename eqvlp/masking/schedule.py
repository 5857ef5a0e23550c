"""CLIPA's two-phase recipe as data: which image size, image mask and text reduction apply at
which training step.

A training loop asks `schedule.at(step)` for the phase, and on a phase change calls
`enter_phase(model, phase)` to resize position embeddings (and re-initialises its optimizer
state, whose position-embedding slots change shape).
"""

import dataclasses

from eqvlp.masking.image import ImageMask
from eqvlp.masking.text import TextMask
from eqvlp.nn.patch_embedding import as_pair


@dataclasses.dataclass(frozen=True)
class Phase:
    """Token reduction from `start_step` on: image size, optional image and text masks."""

    start_step: int
    image_size: int | tuple[int, int]
    image_mask: ImageMask | None = None
    text_mask: TextMask | None = None


@dataclasses.dataclass(frozen=True)
class TokenReductionSchedule:
    """Phases ordered by start step; the first starts at step 0."""

    phases: tuple[Phase, ...]

    def __post_init__(self):
        starts = [p.start_step for p in self.phases]
        if not starts or starts[0] != 0 or starts != sorted(set(starts)):
            raise ValueError(
                f"phases must start at step 0 and have increasing start steps, got {starts}"
            )

    def at(self, step: int) -> Phase:
        """The phase in force at `step`."""
        current = self.phases[0]
        for phase in self.phases:
            if phase.start_step <= step:
                current = phase
        return current

    def changes_at(self, step: int) -> bool:
        """Whether a new phase begins exactly at `step` (step 0 included)."""
        return any(p.start_step == step for p in self.phases)

    @classmethod
    def clipa(
        cls,
        finetune_step: int,
        *,
        low_res: int = 64,
        full_res: int = 224,
        image_mask: ImageMask | None = ImageMask("random", keep_ratio=0.7),
        text_mask: TextMask | None = TextMask("syntax", length=16),
    ) -> "TokenReductionSchedule":
        """Pre-train at `low_res` with masks, then fine-tune at `full_res` with none."""
        return cls((
            Phase(0, low_res, image_mask, text_mask),
            Phase(finetune_step, full_res),
        ))


def enter_phase(model, phase: Phase):
    """The model resized for the phase's image size (the same model when it already matches).

    Works on any model `eqvlp.models.resize` can resize: eqvlp's presets, and modules whose
    position embeddings are `eqvlp.nn` blocks (see `eqvlp.models.protocol`).
    """
    # models import masking: resolve at call time
    from eqvlp.models.resize import image_grids, resize

    config = getattr(getattr(model, "config", None), "vision", None)
    if config is not None:  # a preset: its config knows the image size
        if config.image_shape[:2] == as_pair(phase.image_size):
            return model
        return resize(model, image_size=phase.image_size)
    before = image_grids(model)
    resized = resize(model, image_size=phase.image_size)
    return model if image_grids(resized) == before else resized
