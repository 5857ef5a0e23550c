"""`TrainConfig`: everything one run of `eqvlp train` needs, as frozen dataclasses.

Configs are data (big_vision's lesson): a named preset (`--config clippo-tiny`), a Python file
defining `config()` (`--config my_run.py`), then dotted overrides (`--set optim.lr=3e-4
--set data.image_size=48`). An unknown key is an error naming the close matches.
"""

import ast
import dataclasses
import difflib
import importlib
import importlib.util
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from eqvlp import models
from eqvlp.config_checks import check_fields
from eqvlp.data import DataConfig, ImageAugment, TextAugment
from eqvlp.models.presets import ModelConfig
from eqvlp.render import RenderConfig
from eqvlp.train.optim import OptimConfig


SSL_OBJECTIVES = ("siamlip", "byolip", "barlip", "swalip")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Which objective trains the model.

    - `name`: `auto` (the model's own: softmax for CLIP/CLIPPO presets, sigmoid for SigLIP),
      `softmax`, `sigmoid`, `chunked_sigmoid` (O(chunk x B) memory), `ring_sigmoid` (negatives
      passed round the devices of the batch axes), or `rocket` (clip-rocket: a softmax CLIP term
      on view 0 of each modality, local CLIP terms on the other views of `data.views` through a
      local projector and temperature, plus the `ssl` term; heads in the train state).
    - `chunk_size`: rows per chunk of `chunked_sigmoid`.
    - `label_smoothing`: of the softmax loss; with `rocket`, of its local terms only
      (clip-rocket uses 0.1).
    - `cotraining`: CLIPPO text-pair co-training: this fraction of each batch becomes pairs of
      related texts, both rendered (0 turns it off).
    - `cotraining_text`: a UTF-8 text file of documents separated by blank lines; consecutive
      sentences of a document are the pairs. None: on the shapes dataset, two different
      captions of the same image.
    - `ssl`: clip-rocket's self-supervised term (`rocket` only): `siamlip`, `byolip` (SiamLIP
      with targets from an EMA copy of model and heads, decay `target_decay`), `barlip` or
      `swalip`; None: none.
    - `ssl_weight`: its weight in the total (clip-rocket: 1, and 0.2 for `swalip`).
    - `head_dim`, `head_hidden_dim`: the `ssl` projector's (and predictor's) output and hidden
      sizes (clip-rocket: 128 and 2048).
    - `num_prototypes`: SwALIP's prototypes, frozen for the first `freeze_prototypes_steps`.
    """

    name: Literal["auto", "softmax", "sigmoid", "chunked_sigmoid", "ring_sigmoid",
                  "rocket"] = "auto"
    chunk_size: int = 512
    label_smoothing: float = 0.0
    cotraining: float = 0.0
    cotraining_text: str | None = None
    ssl: Literal["siamlip", "byolip", "barlip", "swalip"] | None = None
    ssl_weight: float = 1.0
    head_dim: int = 128
    head_hidden_dim: int = 2048
    num_prototypes: int = 1000
    freeze_prototypes_steps: int = 100
    target_decay: float = 0.99

    def __post_init__(self):
        check_fields(self)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.cotraining < 1.0:
            raise ValueError(f"loss.cotraining must be in [0, 1), got {self.cotraining}")
        if self.ssl is not None and self.name != "rocket":
            raise ValueError(f"loss.ssl={self.ssl!r} is a clip-rocket term: set loss.name=rocket")
        if min(self.head_dim, self.head_hidden_dim, self.num_prototypes) < 1:
            raise ValueError("loss.head_dim, loss.head_hidden_dim and loss.num_prototypes must "
                             "be >= 1")
        if not 0.0 <= self.target_decay <= 1.0:
            raise ValueError(f"loss.target_decay must be in [0, 1], got {self.target_decay}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation during and after training.

    - `every`: evaluate every N steps (0: only at the end).
    - `data`: `shapes` (the embedded dataset's `split`) or shard pattern(s).
    - `num_samples`: images evaluated (shapes: the split's first N; shards: all when None).
    - `zeroshot`: JSON file `{"classnames": [...], "templates": [...]}`; for `shapes` the built-in
      task `zeroshot_task` is used when None.
    - `tasks`: any of `zeroshot`, `retrieval`.
    """

    every: int = 0
    data: str = "shapes"
    split: str = "test"
    num_samples: int | None = 1000
    zeroshot: str | None = None
    zeroshot_task: Literal["shape", "colour", "shape_colour"] = "shape_colour"
    tasks: tuple[str, ...] = ("zeroshot", "retrieval")
    batch_size: int = 250

    def __post_init__(self):
        check_fields(self)
        unknown = set(self.tasks) - {"zeroshot", "retrieval"}
        if unknown:
            raise ValueError(f"eval.tasks: unknown {sorted(unknown)}: use zeroshot, retrieval")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes (-1: the rest) and the sharding rule table (`dp`, `fsdp`,
    `fsdp_tp`, see docs/sharding.md)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    rules: Literal["dp", "fsdp", "fsdp_tp"] = "dp"

    def __post_init__(self):
        check_fields(self)


@dataclasses.dataclass(frozen=True)
class ClipaConfig:
    """CLIPA token reduction: a first phase on fewer tokens, then a full-resolution fine-tune.

    The first `round(fraction * steps)` steps run with the data and the model at `image_size`
    and the masks below; then the model is resized to full resolution (position embeddings
    resampled) and training continues at the same point of the sample order.

    - `fraction`: share of the steps in the reduced phase (0 turns CLIPA off).
    - `image_size`: image size of the reduced phase (None: unchanged).
    - `image_mask`: `random`, `grid` or `block` patch masking in the reduced phase (None: off),
      dropping `mask_ratio` of the patches (`grid` keeps one patch per k x k window, so
      `mask_ratio` must be 1 - 1/k^2: 0.75 for 2 x 2). CLIPPO masks its rendered text too.
    - `text_mask`: `truncate`, `random`, `block` or `syntax` (by part of speech, on the host),
      to `text_length` tokens, BOS and EOS included (token-id text only; not CLIPPO).
    """

    fraction: float = 0.0
    image_size: int | None = None
    image_mask: Literal["random", "grid", "block"] | None = None
    mask_ratio: float = 0.5
    text_mask: Literal["truncate", "random", "block", "syntax"] | None = None
    text_length: int = 8

    def __post_init__(self):
        check_fields(self)
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"clipa.fraction must be in [0, 1), got {self.fraction}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"clipa.mask_ratio must be in [0, 1), got {self.mask_ratio}: it is "
                             "the share of patches dropped")
        if self.text_length < 3:
            raise ValueError(f"clipa.text_length must be >= 3 (BOS, a token, EOS), got "
                             f"{self.text_length}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. `eqvlp train --help` lists the presets; docs/config.md every field.

    - `model`: a preset name (`eqvlp.models.PRESETS`) or a model config object.
    - `data`: the training data (`eqvlp.data.DataConfig`); its `batch_size` is set from
      `batch_size` and its `seed` from `seed`.
    - `steps`, `batch_size` (global), `accumulation` (micro-batches per step, exact for
      contrastive losses).
    - `precision`: compute dtype (`float32` or `bfloat16`; parameters stay float32).
    - `remat`: rematerialisation policy of the encoders (`full`, `dots`, `dots_no_batch`).
    - `normalization`: how uint8 images become floats on the device (`clip` or `signed`).
    - `vocab_size`, `tokenizer`: the BPE tokenizer trained on the data (saved as
      `tokenizer.json` in the run directory), or a `tokenizer.json` to load.
    - `workdir`: the run directory (checkpoints, metrics.jsonl, results.json, curves.png).
    - `log_samples`: each process appends the keys of the samples it trained on to
      `workdir/samples_{process}.jsonl` (to audit data order and the split over processes).
    """

    model: str | ModelConfig = "clip-tiny"
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    clipa: ClipaConfig = ClipaConfig()
    steps: int = 1000
    batch_size: int = 128
    accumulation: int = 1
    precision: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["full", "dots", "dots_no_batch"] | None = None
    normalization: Literal["clip", "signed"] = "clip"
    vocab_size: int = 1000
    tokenizer: str | None = None
    seed: int = 0
    workdir: str = "runs/eqvlp"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    log_samples: bool = False

    def __post_init__(self):
        check_fields(self)
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.accumulation < 1 or self.batch_size % self.accumulation:
            raise ValueError(
                f"batch_size {self.batch_size} must split into accumulation="
                f"{self.accumulation} equal micro-batches: change one of them"
            )
        if isinstance(self.model, str) and self.model not in models.PRESETS:
            close = difflib.get_close_matches(self.model, list(models.PRESETS), n=3)
            raise ValueError(f"unknown model preset {self.model!r}"
                             + (f": did you mean {', '.join(close)}?" if close else "")
                             + f" (presets: {', '.join(sorted(models.PRESETS))})")

    def model_config(self) -> ModelConfig:
        """The model config with `precision` and `remat` applied."""
        cfg = models.config(self.model) if isinstance(self.model, str) else self.model
        cfg = dataclasses.replace(cfg, dtype=self.precision)
        if self.remat is not None:
            towers = {f: dataclasses.replace(getattr(cfg, f), remat=self.remat)
                      for f in ("vision", "text") if hasattr(getattr(cfg, f, None), "remat")}
            cfg = dataclasses.replace(cfg, **towers)
        return cfg


def _shapes_data(**kw) -> DataConfig:
    # No random resized crop: every training sample is drawn afresh, and a crop's aspect change
    # turns the circles and squares that captions name into ellipses and rectangles (measured
    # with the stem and pooling below: zero-shot 0.52 -> 0.64 after 1200 steps, with gap pooling)
    return DataConfig(**{"data": "shapes", "image_size": 64, "context_length": 16,
                         "augment": ImageAugment(scale=(1.0, 1.0), ratio=(1.0, 1.0)), **kw})


def _default() -> TrainConfig:
    """A small CLIP on the embedded shapes dataset: the README's first command."""
    return TrainConfig(
        model=dataclasses.replace(
            models.config("clip-tiny"),
            # A conv stem to 16 x 16 patches: shapes are learned several times faster than
            # through 8 x 8 linear patches, and 9 tokens (48 px) keep the encoder cheap. Without
            # the stem's per-pixel LayerNorm, shapes are learned faster again and a step is ~20%
            # cheaper; mean pooling instead of a class token learns faster on this data too.
            # Narrow early convolutions (16, 32 channels) cost 90 instead of 150 ms a step
            # (batch 128, forward and backward, on 2 cores).
            vision=models.ViTConfig.tiny(image_size=48, patch_size=16, width=96, depth=3,
                                         num_heads=3, mlp_dim=192, projection_dim=64,
                                         stem="conv", stem_widths=(16, 32, 64, 96),
                                         stem_norm=False, class_token=False, pooling="gap"),
            # Bidirectional attention and mean pooling in place of causal + EOS: a caption's
            # embedding is closer to a sum of its words, so colour+shape pairs never seen
            # together are matched more often (zero-shot at 1200 steps: 0.61 -> 0.73). Width 64
            # and depth 2 cost 26 instead of 91 ms a step; depth 1 was cheaper still, but
            # confused which colour goes with which shape in two-object scenes.
            text=models.TextConfig.tiny(projection_dim=64, causal=False, pooling="mean"),
        ),
        data=_shapes_data(image_size=48, workers=1),
        eval=EvalConfig(every=700),
        # Weight decay 0.2 rather than 0.05: the held-out colour+shape pairs are matched more
        # often (zero-shot on them 0.76 -> 0.84), as if shape features were shared across
        # colours rather than learned per colour; 0.4 did no better (0.899 in all). No text
        # padding mask (pad_token_id): with it, zero-shot fell from 0.911 to 0.834.
        optim=OptimConfig(lr=2e-3, warmup_steps=100, weight_decay=0.2),
        # 2800 steps of 128: under 10 minutes on 2 CPU cores, evaluations included (503 s;
        # zero-shot top-1 0.911 on the test split, docs/quickstart.md)
        steps=2800, batch_size=128, checkpoint_every=700, workdir="runs/default",
    )


def _siglip() -> TrainConfig:
    """The default with the sigmoid loss (SigLIP: learned scale and bias)."""
    base = _default()
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, loss="sigmoid", max_logit_scale=None),
        workdir="runs/siglip-tiny")


def _clippo() -> TrainConfig:
    """One ViT for photos and rendered captions (CLIPPO) on the embedded dataset."""
    base = _default()
    return dataclasses.replace(
        base, model=dataclasses.replace(
            models.config("clippo-tiny"),
            vision=models.ViTConfig.tiny(image_size=64, patch_size=16, width=96, depth=3,
                                         num_heads=3, mlp_dim=192, class_token=False,
                                         stem="conv", stem_widths=(24, 48, 96, 96),
                                         pooling="map", projection_dim=64,
                                         projection_bias=True),
            # 8 px glyphs, wrapped at spaces: a whole caption fits a 64 px image
            render=RenderConfig(font_size=8, wrap="word")),
        data=dataclasses.replace(base.data, text="render", image_size=64),
        normalization="signed",
        # At the default's lr 2e-3 the one tower falls onto constant embeddings within ~20 steps
        # (loss stuck at log 128) and never leaves; at 5e-4 with a 100-step warm-up it leaves
        # that plateau at step ~90 (loss 3.99 at 400 steps, zero-shot top-1 0.09 of 48 classes).
        # (weight decay 0.05, as when that was measured)
        optim=dataclasses.replace(base.optim, lr=5e-4, warmup_steps=100, weight_decay=0.05),
        steps=1200, workdir="runs/clippo-tiny")


def _clipa() -> TrainConfig:
    """The default trained CLIPA's way: 3/4 of the steps at 32 px with half the patches and
    syntax-reduced captions, then a fine-tune at the default's 48 px."""
    return dataclasses.replace(
        _default(), clipa=ClipaConfig(fraction=0.75, image_size=32, image_mask="random",
                                      mask_ratio=0.5, text_mask="syntax", text_length=10),
        workdir="runs/clipa-tiny")


def _rocket() -> TrainConfig:
    """The default trained with clip-rocket: two augmented views of each image and caption,
    local CLIP terms, and the SiamLIP term."""
    base = _default()
    return dataclasses.replace(
        base, loss=LossConfig(name="rocket", ssl="siamlip", label_smoothing=0.1, head_dim=64,
                              head_hidden_dim=256),
        data=dataclasses.replace(base.data, views=2, text_augment=TextAugment()),
        workdir="runs/rocket-tiny")


def _clippo_cotraining() -> TrainConfig:
    """CLIPPO with a quarter of each batch made of rendered caption pairs."""
    base = _clippo()
    return dataclasses.replace(base, loss=dataclasses.replace(base.loss, cotraining=0.25),
                               workdir="runs/clippo-cotraining")


CONFIGS: dict[str, Callable[[], TrainConfig]] = {
    "default": _default,
    "siglip-tiny": _siglip,
    "clippo-tiny": _clippo,
    "clipa-tiny": _clipa,
    "rocket-tiny": _rocket,
    "clippo-cotraining": _clippo_cotraining,
}


def load_config(name_or_path: str | None = None) -> TrainConfig:
    """A named config (`CONFIGS`) or a Python file that defines `config() -> TrainConfig`."""
    if name_or_path is None:
        return _default()
    if name_or_path.endswith(".py"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        spec = importlib.util.spec_from_file_location(f"eqvlp_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not callable(getattr(module, "config", None)):
            raise ValueError(f"config file {path} must define config() returning a TrainConfig")
        cfg = module.config()
        if not isinstance(cfg, TrainConfig):
            raise TypeError(f"{path}: config() returned {type(cfg).__name__}, not a TrainConfig")
        return cfg
    if name_or_path not in CONFIGS:
        close = difflib.get_close_matches(name_or_path, list(CONFIGS), n=3)
        raise ValueError(f"unknown config {name_or_path!r}"
                         + (f": did you mean {', '.join(close)}?" if close else "")
                         + f" (configs: {', '.join(CONFIGS)}, or a path ending in .py)")
    return CONFIGS[name_or_path]()


def dotted_fields(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every settable key of a config tree (`optim.lr`, `data.image_size`, ...) and its value."""
    out = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        key = f"{prefix}{field.name}"
        out[key] = value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(dotted_fields(value, f"{key}."))
    return out


def _parse(text: str, annotation: Any) -> Any:
    """A command-line string as a value of the annotated type."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if text.lower() in ("none", "null"):
        value = None
    elif text.lower() in ("true", "false"):
        value = text.lower() == "true"
    args = typing.get_args(annotation)
    types_ = set(args) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else {annotation}
    if float in types_ and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if str in types_ and not isinstance(value, str) and value is not None and not (
            {int, float, tuple} & types_ or any(typing.get_origin(t) is tuple for t in types_)):
        value = text
    if any(typing.get_origin(t) is tuple for t in types_) and isinstance(value, list):
        value = tuple(value)
    classes = [t for t in types_ if dataclasses.is_dataclass(t)]
    if classes and value is not None and not (str in types_ and isinstance(value, str)):
        # a nested config given whole: {"delete": 0.3, ...} (a string is a preset name)
        if not isinstance(value, dict):
            raise ValueError(
                f"{text!r} is not a {classes[0].__name__}: give its fields as a dict, e.g. "
                "--set 'data.text_augment={\"delete\": 0.3}', or set one field with a dotted key")
        try:
            value = classes[0](**value)
        except TypeError as error:
            raise ValueError(f"{classes[0].__name__}: {error}") from None
    return value


def override(cfg: Any, assignments: Sequence[str]) -> Any:
    """Applies `KEY=VALUE` assignments with dotted keys (`optim.lr=3e-4`) to a config tree.

    A named model preset becomes its config first, so `model.vision.depth=4` works on presets.
    """
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set {assignment!r}: write KEY=VALUE, e.g. optim.lr=3e-4")
        if key.startswith("model.") and isinstance(cfg.model, str):
            cfg = dataclasses.replace(cfg, model=models.config(cfg.model))
        known = dotted_fields(cfg)
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
            raise ValueError(f"unknown config key {key!r}"
                             + (f": did you mean {', '.join(close)}?" if close else "")
                             + " (eqvlp train --help-config lists every key)")
        cfg = _set(cfg, key.split("."), text, key)
    return cfg


def _set(node: Any, path: list[str], text: str, full_key: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(node)}[path[0]]
    if len(path) == 1:
        hints = typing.get_type_hints(type(node))
        value = _parse(text, hints.get(field.name, Any))
        return dataclasses.replace(node, **{field.name: value})
    child = getattr(node, field.name)
    return dataclasses.replace(node, **{field.name: _set(child, path[1:], text, full_key)})


def finalize(cfg: TrainConfig) -> TrainConfig:
    """Ties the data config to the run: global batch size and seed."""
    return dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, batch_size=cfg.batch_size, seed=cfg.seed))


def to_json(cfg: Any) -> Any:
    """A config tree as JSON values; dataclasses carry their class (`"__class__"`) so that
    `from_json` rebuilds the same objects (the run directory keeps `config.json`)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        out = {"__class__": f"{type(cfg).__module__}:{type(cfg).__qualname__}"}
        out.update({f.name: to_json(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)})
        return out
    if isinstance(cfg, tuple):
        return {"__tuple__": [to_json(v) for v in cfg]}
    return cfg


def from_json(value: Any) -> Any:
    """Inverse of `to_json` (only eqvlp's own config classes are rebuilt)."""
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if isinstance(value, dict) and "__class__" in value:
        module, _, name = value["__class__"].partition(":")
        if not module.startswith("eqvlp."):
            raise ValueError(f"config.json names class {value['__class__']!r}: only eqvlp "
                             "configs can be rebuilt")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: from_json(v) for k, v in value.items() if k != "__class__"})
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def _type_name(annotation: Any) -> str:
    """`int`, `str or None`, `'a' or 'b'`, `tuple[str, ...]`: annotations readable in a table."""
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin is tuple:
        return f"tuple[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    return str(annotation).replace("typing.", "")


def reference_markdown() -> str:
    """docs/config.md: every key of `TrainConfig`, its type and default (generated)."""
    lines = ["# `eqvlp train` configuration reference", "",
             "Generated from `eqvlp.train.config.TrainConfig` by "
             "`python -m eqvlp.train.config > docs/config.md` (a test checks it is current).",
             "Set any key with `eqvlp train --set KEY=VALUE`. Defaults are the dataclasses' own; "
             "the named configs (" + ", ".join(f"`{n}`" for n in CONFIGS) + ", defined in "
             "`eqvlp/train/config.py`) change some of them.", ""]

    def section(cls, prefix):
        lines.extend([f"## `{prefix.rstrip('.') or 'TrainConfig'}` ({cls.__name__})", "",
                      (cls.__doc__ or "").strip().split("\n")[0], "",
                      "| key | type | default |", "| --- | --- | --- |"])
        nested = []
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            default = (field.default if field.default is not dataclasses.MISSING
                       else field.default_factory())
            if dataclasses.is_dataclass(default) and not isinstance(default, type) and \
                    field.name != "model":
                nested.append((type(default), f"{prefix}{field.name}."))
                continue
            kind = _type_name(hints[field.name])
            if field.name == "model":
                kind, default = "preset name or model config", "clip-tiny"
            lines.append(f"| `{prefix}{field.name}` | `{kind}` | `{default!r}` |")
        lines.append("")
        for cls_, prefix_ in nested:
            section(cls_, prefix_)

    section(TrainConfig, "")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
