"""Training-step time and peak memory of an eqvlp CLIP against open_clip's same model, on CPU.

Both sides run in one process on the same threads, the same batch and the same optimiser
(AdamW, b1 0.9, b2 0.98, eps 1e-6, weight decay 0.1 on every parameter): eqvlp's
`make_train_step` jitted with the parameters and optimiser state donated, and open_clip's
`CLIP` (torch, float32) with `ClipLoss`, `loss.backward()` and `torch.optim.AdamW`. The machine
may be shared, so the two are timed interleaved (eqvlp, open_clip, eqvlp, ...) after one
warm-up call each and the medians reported. The breakdown times, the same way: each tower's
forward (torch under `no_grad`) and forward+backward (of the sum of squared embeddings), the
contrastive loss's forward+backward on embeddings, and one optimiser update.

Peak memory, all buffers live during one step (parameters, gradients, optimiser state, batch,
activations):

- eqvlp: XLA's buffer assignment of the compiled step (`compiled.memory_analysis()`):
  arguments + temporaries + outputs - outputs aliased to donated arguments.
- open_clip: torch's profiler (`profile_memory=True`) records every CPU allocation and free of
  one step; the peak of their running sum is added to what is live before the step
  (parameters, AdamW's moments, the batch; gradients are set to None first).

    python -m benchmarks.train_step                                # clip-vit-s16, batch 32
    python -m benchmarks.train_step --batches 16,32,64 --json train_step.json

open_clip is a test-only peer installed with `--no-deps`; importing its package pulls in
torchvision, which has no build for this CPU torch, so its model, transformer and loss modules
are loaded without the package `__init__` (`load_open_clip`). The open_clip model is built from
the eqvlp config (`open_clip_config`); where open_clip cannot express the eqvlp config exactly
(e.g. a patch bias) the differences are listed in the output.
"""

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time
import types
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from eqvlp import models
from eqvlp.losses import clip_loss, normalize
from eqvlp.models import CLIPConfig
from eqvlp.train.step import contrastive_loss, make_train_step

ADAMW = dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1)
LR = 1e-4


def threads() -> int:
    """The cores this process may run on (XLA's CPU client sizes its pool the same way)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# ---------------------------------------------------------------------------------------------
# open_clip, loaded without its package __init__


def load_open_clip() -> types.SimpleNamespace:
    """open_clip's `model` and `loss` modules, without importing torchvision.

    `open_clip/utils.py` imports torchvision's `FrozenBatchNorm2d` at the top, used only to
    freeze ResNet batch norms; it is executed here with that one import replaced by `None`.
    """
    if "open_clip.model" not in sys.modules:
        spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("open_clip_torch is not installed: pip install --no-deps "
                              "open_clip_torch==3.3.0 (.ci/run does)")
        root = pathlib.Path(next(iter(spec.submodule_search_locations)))
        package = types.ModuleType("open_clip")
        package.__path__ = [str(root)]
        sys.modules.setdefault("open_clip", package)
        source = (root / "utils.py").read_text()
        line = "from torchvision.ops.misc import FrozenBatchNorm2d"
        if line in source:
            utils = types.ModuleType("open_clip.utils")
            utils.__file__ = str(root / "utils.py")
            code = compile(source.replace(line, "FrozenBatchNorm2d = None"), utils.__file__, "exec")
            exec(code, utils.__dict__)
            sys.modules["open_clip.utils"] = utils
    import open_clip.loss
    import open_clip.model

    return types.SimpleNamespace(model=sys.modules["open_clip.model"],
                                 loss=sys.modules["open_clip.loss"])


def open_clip_config(config: CLIPConfig) -> tuple[dict, list[str]]:
    """open_clip `CLIP(**kwargs)` arguments for an eqvlp CLIP config, and what differs."""
    v, t = config.vision, config.text
    kwargs = dict(
        embed_dim=v.output_dim,
        vision_cfg=dict(image_size=v.image_size, patch_size=v.patch_size, width=v.width,
                        layers=v.depth, head_width=v.width // v.num_heads,
                        mlp_ratio=v.mlp_dim / v.width),
        text_cfg=dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width,
                      heads=t.num_heads, layers=t.depth, mlp_ratio=t.mlp_dim / t.width),
        quick_gelu=v.activation == "quick_gelu",
    )
    differences = []
    if v.activation != t.activation or v.activation not in ("gelu", "quick_gelu"):
        differences.append(f"activations {v.activation}/{t.activation} (open_clip: one of "
                           "gelu, quick_gelu for both towers)")
    if not v.pre_norm:
        differences.append("open_clip has a LayerNorm before the image encoder (pre_norm)")
    if v.patch_bias:
        differences.append("open_clip's patch embedding has no bias")
    if v.pooling != "cls" or v.stem != "patch" or v.position_embedding != "learned":
        differences.append("open_clip pools the class token of a learned-position patch ViT")
    if t.pooling not in ("argmax", "eos") or not t.causal:
        differences.append("open_clip pools a causal text tower at the largest token id")
    if config.loss != "softmax":
        differences.append("open_clip's step uses the softmax ClipLoss")
    return kwargs, differences


# ---------------------------------------------------------------------------------------------
# inputs


def make_batch(config: CLIPConfig, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images `(batch, H, W, 3)` in [-1, 1] and token ids ending in the EOS (largest) id."""
    rng = np.random.default_rng(seed)
    h, w, _ = config.vision.image_shape
    images = rng.uniform(-1, 1, (batch, h, w, 3)).astype(np.float32)
    t = config.text
    eos = t.eos_token_id if t.eos_token_id is not None else t.vocab_size - 1
    low = 3 if eos < t.vocab_size - 1 else 1
    ids = rng.integers(low, max(low + 1, t.vocab_size - 1), (batch, t.context_length))
    ids[:, -1] = eos
    return images, ids.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# eqvlp


def _split(model):
    return eqx.partition(model, eqx.is_array)


def eqvlp_side(config: CLIPConfig, images: np.ndarray, ids: np.ndarray, *, parts: bool) -> dict:
    """Compiled eqvlp callables (each runs once and blocks), their compile time and step memory."""
    model = eqx.filter_jit(lambda: models.CLIP(config, key=jax.random.key(0)))()  # one compile,
    # not one dispatch per initialiser
    optimizer = optax.adamw(LR, **ADAMW)
    params, static = _split(model)
    opt_state = optimizer.init(params)
    images, ids = jnp.asarray(images), jnp.asarray(ids)
    train_step = make_train_step(optimizer)

    def step(params, opt_state, images, ids):
        new_model, opt_state, loss = train_step(eqx.combine(params, static), opt_state, images, ids)
        return eqx.filter(new_model, eqx.is_array), opt_state, loss

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, images, ids).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    peak = (stats.argument_size_in_bytes + stats.temp_size_in_bytes + stats.output_size_in_bytes
            - stats.alias_size_in_bytes)
    state = {"params": params, "opt_state": opt_state}

    def run_step():
        state["params"], state["opt_state"], loss = compiled(state["params"], state["opt_state"],
                                                             images, ids)
        jax.block_until_ready(loss)

    calls = {"step": run_step}
    if parts:
        calls.update(_eqvlp_parts(static, state, optimizer, images, ids))
    return {"calls": calls, "compile_s": compile_s, "peak_bytes": int(peak),
            "temp_bytes": int(stats.temp_size_in_bytes),
            "parameters": sum(x.size for x in jax.tree.leaves(params))}


def _eqvlp_parts(static, state, optimizer, images, ids) -> dict[str, Callable[[], None]]:
    def model_of(params):
        return eqx.combine(params, static)

    def squares(z):
        return jnp.sum(jnp.square(z))

    def tower_grad(tower: str, encode: Callable):
        """The gradient of one tower's parameters only (the other tower's are constants)."""
        spec = jax.tree.map(lambda _: False, state["params"])
        spec = eqx.tree_at(lambda m: getattr(m, tower), spec,
                           replace=jax.tree.map(lambda _: True, getattr(state["params"], tower)))

        def grad(params, inputs):
            trained, frozen = eqx.partition(params, spec)
            return jax.grad(lambda t: squares(encode(model_of(eqx.combine(t, frozen)), inputs)))(
                trained)

        return jax.jit(grad)

    image_fwd = jax.jit(lambda p, x: model_of(p).encode_image(x))
    text_fwd = jax.jit(lambda p, t: model_of(p).encode_text(t))
    image_grad = tower_grad("image", lambda m, x: m.encode_image(x))
    text_grad = tower_grad("text", lambda m, t: m.encode_text(t))
    zimg, ztxt = image_fwd(state["params"], images), text_fwd(state["params"], ids)
    loss_grad = jax.jit(jax.grad(lambda zi, zt, s: clip_loss(normalize(zi), normalize(zt), s),
                                 argnums=(0, 1, 2)))
    scale = jnp.float32(1 / 0.07)
    grads = jax.tree.map(jnp.ones_like, state["params"])

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, opt_state, grads):
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def run_update():
        state["params"], state["opt_state"] = update(state["params"], state["opt_state"], grads)
        jax.block_until_ready(state["params"])

    block = jax.block_until_ready
    return {
        "image_forward": lambda: block(image_fwd(state["params"], images)),
        "image_forward_backward": lambda: block(image_grad(state["params"], images)),
        "text_forward": lambda: block(text_fwd(state["params"], ids)),
        "text_forward_backward": lambda: block(text_grad(state["params"], ids)),
        "loss_forward_backward": lambda: block(loss_grad(zimg, ztxt, scale)),
        "optimizer_update": run_update,
    }


# ---------------------------------------------------------------------------------------------
# open_clip


def open_clip_side(config: CLIPConfig, images: np.ndarray, ids: np.ndarray, *, parts: bool,
                   memory: bool = True) -> dict:
    """open_clip callables (each runs once), and the step's peak memory from torch's profiler."""
    import torch

    oc = load_open_clip()
    kwargs, differences = open_clip_config(config)
    torch.manual_seed(0)
    model = oc.model.CLIP(**kwargs).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=(ADAMW["b1"], ADAMW["b2"]),
                                  eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    loss_fn = oc.loss.ClipLoss()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    text = torch.from_numpy(ids.astype(np.int64))

    def step():
        optimizer.zero_grad(set_to_none=True)
        zimg, ztxt, scale = model(x, text)
        loss_fn(zimg, ztxt, scale).backward()
        optimizer.step()

    calls = {"step": step}
    if parts:
        calls.update(_open_clip_parts(model, optimizer, loss_fn, x, text))
    step()  # AdamW's moments exist from here on, as in eqvlp's optimiser state
    peak = _torch_step_peak(step, model, optimizer, (x, text)) if memory else None
    return {"calls": calls, "peak_bytes": peak, "differences": differences,
            "parameters": sum(p.numel() for p in model.parameters())}


def _open_clip_parts(model, optimizer, loss_fn, x, text) -> dict[str, Callable[[], None]]:
    import torch

    def forward(encode, inputs):
        with torch.no_grad():
            encode(inputs)

    def forward_backward(encode, inputs):
        model.zero_grad(set_to_none=True)
        encode(inputs).square().sum().backward()

    with torch.no_grad():
        zimg, ztxt = model.encode_image(x), model.encode_text(text)

    def loss_backward():
        zi, zt = zimg.clone().requires_grad_(), ztxt.clone().requires_grad_()
        scale = torch.tensor(1 / 0.07, requires_grad=True)
        loss_fn(torch.nn.functional.normalize(zi, dim=-1),
                torch.nn.functional.normalize(zt, dim=-1), scale).backward()

    def update():
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.ones_like(p)
        optimizer.step()

    return {
        "image_forward": lambda: forward(model.encode_image, x),
        "image_forward_backward": lambda: forward_backward(model.encode_image, x),
        "text_forward": lambda: forward(model.encode_text, text),
        "text_forward_backward": lambda: forward_backward(model.encode_text, text),
        "loss_forward_backward": loss_backward,
        "optimizer_update": update,
    }


def _torch_step_peak(step, model, optimizer, batch) -> int:
    """Live bytes before the step (parameters, AdamW state, batch) + the profiler's peak of
    allocations minus frees during it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    optimizer.zero_grad(set_to_none=True)  # freed before profiling: the profiler sees no
    # deallocation of blocks it never saw allocated
    tensors = [*model.parameters(), *batch]
    tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    before = sum(t.numel() * t.element_size() for t in tensors)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return int(before + peak)


# ---------------------------------------------------------------------------------------------
# the comparison


def interleaved(pairs: dict[str, tuple[Callable, Callable]], repeats: int) -> dict:
    """Medians (ms) of `repeats` ABAB rounds of every pair, after one warm-up call of each."""
    for a, b in pairs.values():
        a(), b()
    times = {name: ([], []) for name in pairs}
    for _ in range(repeats):
        for name, (a, b) in pairs.items():
            for fn, out in ((a, times[name][0]), (b, times[name][1])):
                start = time.perf_counter()
                fn()
                out.append(1e3 * (time.perf_counter() - start))
    return {name: {"eqvlp_ms": statistics.median(ta), "open_clip_ms": statistics.median(tb),
                   "eqvlp_times_ms": ta, "open_clip_times_ms": tb}
            for name, (ta, tb) in times.items()}


def compare(config: CLIPConfig, batch: int, *, repeats: int = 5, parts: bool = True,
            memory: bool = True) -> dict:
    """One batch size: step time (and parts), both sides interleaved; peak memory of the step."""
    import torch

    torch.set_num_threads(threads())
    images, ids = make_batch(config, batch)
    ours = eqvlp_side(config, images, ids, parts=parts)
    theirs = open_clip_side(config, images, ids, parts=parts, memory=memory)
    timed = interleaved({name: (ours["calls"][name], theirs["calls"][name])
                         for name in ours["calls"]}, repeats)
    step = timed.pop("step")
    return {
        "batch": batch,
        "eqvlp_ms_per_step": step["eqvlp_ms"],
        "open_clip_ms_per_step": step["open_clip_ms"],
        "speedup": step["open_clip_ms"] / step["eqvlp_ms"],
        "eqvlp_step_times_ms": step["eqvlp_times_ms"],
        "open_clip_step_times_ms": step["open_clip_times_ms"],
        "eqvlp_peak_bytes": ours["peak_bytes"],
        "eqvlp_temp_bytes": ours["temp_bytes"],
        "open_clip_peak_bytes": theirs["peak_bytes"],
        "eqvlp_compile_s": ours["compile_s"],
        "eqvlp_parameters": int(ours["parameters"]),
        "open_clip_parameters": int(theirs["parameters"]),
        "open_clip_differences": theirs["differences"],
        "breakdown": {name: {"eqvlp_ms": t["eqvlp_ms"], "open_clip_ms": t["open_clip_ms"]}
                      for name, t in timed.items()},
    }


def run(config: CLIPConfig, batches: list[int], *, repeats: int = 5, parts_batch: int | None = None,
        memory: bool = True) -> dict:
    """`compare` at every batch size (the breakdown at `parts_batch` only), plus the setup."""
    import torch

    rows = [compare(config, b, repeats=repeats, parts=b == parts_batch, memory=memory)
            for b in batches]
    main_row = next((r for r in rows if r["batch"] == parts_batch), rows[0])
    return {
        "eqvlp_ms_per_step": main_row["eqvlp_ms_per_step"],
        "open_clip_ms_per_step": main_row["open_clip_ms_per_step"],
        "batch": main_row["batch"],
        "breakdown": main_row["breakdown"],
        "batches": rows,
        "setup": {
            "threads": threads(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "jax": jax.__version__, "repeats": repeats,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "device": jax.devices()[0].device_kind,
            "optimizer": {"name": "AdamW", "lr": LR, **ADAMW},
        },
    }


def _mib(n):
    return "-" if n is None else f"{n / 2**20:,.0f}"


def print_report(result: dict, preset: str) -> None:
    s = result["setup"]
    print(f"{preset}: jax {s['jax']} vs torch {s['torch']}, {s['threads']} threads, "
          f"AdamW, float32, {s['repeats']} interleaved repeats (medians)")
    for diff in result["batches"][0]["open_clip_differences"]:
        print(f"  note: {diff}")
    print("\n| batch | eqvlp ms/step | open_clip ms/step | eqvlp speed | eqvlp peak MiB "
          "| open_clip peak MiB |\n|---:|---:|---:|---:|---:|---:|")
    for r in result["batches"]:
        print(f"| {r['batch']} | {r['eqvlp_ms_per_step']:,.0f} | {r['open_clip_ms_per_step']:,.0f} "
              f"| {r['speedup']:.2f}x | {_mib(r['eqvlp_peak_bytes'])} "
              f"| {_mib(r['open_clip_peak_bytes'])} |")
    if result["breakdown"]:
        print(f"\nBreakdown at batch {result['batch']} (ms):\n\n| part | eqvlp | open_clip |"
              "\n|---|---:|---:|")
        for name, t in result["breakdown"].items():
            print(f"| {name} | {t['eqvlp_ms']:,.1f} | {t['open_clip_ms']:,.1f} |")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="clip-vit-s16", help="an eqvlp CLIP preset")
    parser.add_argument("--batch", type=int, default=32, help="the batch of the breakdown")
    parser.add_argument("--batches", default=None,
                        help="comma-separated batch sizes for the scaling table, e.g. 16,32,64")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per timing")
    parser.add_argument("--no-parts", action="store_true", help="time whole steps only")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    config = models.presets.config(args.preset)
    if not isinstance(config, CLIPConfig):
        raise SystemExit(f"--preset {args.preset} is not a two-tower CLIP/SigLIP preset: "
                         "open_clip's CLIP can only stand in for those")
    batches = [int(b) for b in args.batches.split(",")] if args.batches else [args.batch]
    if args.batch not in batches:
        batches = sorted({*batches, args.batch})
    result = run(config, batches, repeats=args.repeats,
                 parts_batch=None if args.no_parts else args.batch)
    result["setup"]["preset"] = args.preset
    print_report(result, args.preset)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
