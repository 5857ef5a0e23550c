"""CLIPA's two phases in the training loop: which shapes and masks apply at each step, and how
the train state moves from the reduced phase to full resolution.

`training_phases(cfg, ...)` turns `ClipaConfig` into `TrainPhase`s (one when CLIPA is off): each
holds its steps, the model config and data config at its image size, and its token reduction
(`eqvlp.masking.Phase`). At a phase change the loop calls `resize_state` (model, EMA weights
and BYOLIP target resized with `masking.enter_phase`: position embeddings resampled) and
`carry_optimizer_state` (Adam moments kept for every leaf whose shape did not change, zeros for
the resized position tables; the step count continues, so the learning-rate schedule is one
schedule over the whole run), then jits a new step and reopens the data at the same point of the
sample order at the new size.
"""

import dataclasses
import math

import jax
from jaxtyping import PyTree

from eqvlp import masking
from eqvlp.data import DataConfig
from eqvlp.models.clippo import CLIPPOConfig
from eqvlp.models.presets import ModelConfig


@dataclasses.dataclass(frozen=True)
class TrainPhase:
    """Steps `[start, stop)` trained with fixed shapes.

    - `name`: `reduced` (CLIPA's first phase) or `full`.
    - `model_config`, `data`: the model and the training data at the phase's image size.
    - `reduction`: the phase's image size and masks (`masking.Phase`).
    """

    name: str
    start: int
    stop: int
    model_config: ModelConfig
    data: DataConfig
    reduction: masking.Phase

    @property
    def image_mask(self) -> masking.ImageMask | None:
        return self.reduction.image_mask

    @property
    def text_mask(self) -> masking.TextMask | None:
        return self.reduction.text_mask


def image_mask(kind: str, mask_ratio: float) -> masking.ImageMask:
    """The `ImageMask` that drops `mask_ratio` of the patches."""
    keep = 1.0 - mask_ratio
    if kind != "grid":
        return masking.ImageMask(kind, keep_ratio=keep)
    window = round(math.sqrt(1.0 / keep))
    if window < 2 or not math.isclose(window * window * keep, 1.0, rel_tol=0.02):
        raise ValueError(f"clipa.image_mask=grid keeps one patch per k x k window, so "
                         f"clipa.mask_ratio must be 1 - 1/k^2 (0.75 for k=2, 0.889 for k=3), got "
                         f"{mask_ratio}")
    return masking.ImageMask("grid", window=window)


def training_phases(cfg, model_config: ModelConfig, data: DataConfig) -> tuple[TrainPhase, ...]:
    """The run's phases: `(full,)`, or `(reduced, full)` when `cfg.clipa.fraction` > 0.

    `cfg` is the `TrainConfig`; `model_config` and `data` are the full-resolution ones.
    """
    clipa, steps = cfg.clipa, cfg.steps
    full_size = model_config.vision.image_size
    full = masking.Phase(0, full_size)
    switch = round(clipa.fraction * steps)
    if switch == 0:
        return (TrainPhase("full", 0, steps, model_config, data, full),)
    if clipa.image_size is None and clipa.image_mask is None and clipa.text_mask is None:
        raise ValueError("clipa.fraction > 0 but nothing is reduced: set clipa.image_size, "
                         "clipa.image_mask or clipa.text_mask (or clipa.fraction=0)")
    if switch >= steps:
        raise ValueError(f"clipa.fraction={clipa.fraction} of {steps} steps leaves no "
                         "full-resolution step: lower the fraction or train longer")
    rendered = isinstance(model_config, CLIPPOConfig)
    text_mask = None
    if clipa.text_mask is not None:
        if rendered:
            raise ValueError("CLIPPO renders text as images: clipa.text_mask does not apply (its "
                             "rendered text is masked with clipa.image_mask like photos); set "
                             "clipa.text_mask=None")
        context = data.context_length
        if clipa.text_length > context:
            raise ValueError(f"clipa.text_length={clipa.text_length} is longer than the "
                             f"{context} tokens of a caption: use at most {context}")
        text_mask = masking.TextMask(clipa.text_mask, length=clipa.text_length)
    size = clipa.image_size if clipa.image_size is not None else full_size
    mask = image_mask(clipa.image_mask, clipa.mask_ratio) if clipa.image_mask else None
    vision = dataclasses.replace(model_config.vision, image_size=size)
    reduced_model = dataclasses.replace(model_config, vision=vision)
    if mask is not None:
        mask.num_kept(vision.grid)  # a block/grid that cannot fit the grid fails here, early
    reduced_data = dataclasses.replace(data, image_size=size)
    if clipa.text_mask == "syntax":  # needs words: reduced on the host before tokenizing
        reduced_data = dataclasses.replace(reduced_data, syntax_words=clipa.text_length - 2)
    return (
        TrainPhase("reduced", 0, switch, reduced_model, reduced_data,
                   masking.Phase(0, size, mask, text_mask)),
        TrainPhase("full", switch, steps, model_config, data,
                   dataclasses.replace(full, start_step=switch)),
    )


def phase_at(phases: tuple[TrainPhase, ...], step: int) -> TrainPhase:
    """The phase that trains step `step` (0-based)."""
    for phase in phases:
        if phase.start <= step < phase.stop:
            return phase
    return phases[-1]


def resize_state(state: dict, phase: TrainPhase) -> dict:
    """The state's models (`model`, `ema`, BYOLIP's `target["model"]`) at the phase's image
    size; everything else as it was (the optimiser state is `carry_optimizer_state`'s job)."""
    out = dict(state)
    for name in ("model", "ema"):
        if name in out:
            out[name] = masking.enter_phase(out[name], phase.reduction)
    if "target" in out:
        out["target"] = dict(out["target"],
                             model=masking.enter_phase(out["target"]["model"], phase.reduction))
    return out


def carry_optimizer_state(old: PyTree, fresh: PyTree) -> PyTree:
    """`fresh`'s structure, with `old`'s value for every leaf of the same shape and dtype.

    After a resize the optimiser state's tree has the same leaves in the same order (only the
    models' static configs changed): Adam's moments of unchanged parameters and the step
    count carry over; the resized leaves (position tables) start from `fresh` (zeros).
    """
    old_leaves = jax.tree.leaves(old)
    fresh_leaves, treedef = jax.tree.flatten(fresh)
    if len(old_leaves) != len(fresh_leaves):
        raise ValueError(f"optimiser states differ in structure ({len(old_leaves)} vs "
                         f"{len(fresh_leaves)} leaves): rebuild it with optimizer.init")
    return jax.tree.unflatten(treedef, [
        o if (o.shape, o.dtype) == (f.shape, f.dtype) else f
        for o, f in zip(old_leaves, fresh_leaves)
    ])

