"""`eqvlp train`: pre-train a contrastive model on shards or the embedded dataset, evaluate it,
and resume exactly.

One function, `train(config)`, reads top to bottom: mesh and model, tokenizer and data, the
optimiser, restore, then the loop (step, log, evaluate, checkpoint) and the run's outputs in its
directory: `metrics.jsonl`, `results.json`, `curves.png`, `tokenizer.json`, `checkpoints/`.
Beside it: `state` (the train state and the step's body), `encode` (views, CLIPA masks and
per-example keys), `clipa` (the two phases), `rocket` (clip-rocket's heads and loss) and
`cotraining` (CLIPPO's text pairs).
"""

import dataclasses
import json
import math
import os
import time
from pathlib import Path

import equinox as eqx
import jax
import numpy as np

from eqvlp import sharding
from eqvlp.data import (
    DataConfig,
    Loader,
    fit_tokenizer,
    global_batch,
    held_out_mask,
    make_source,
    normalization,
    normalize_images,
)
from eqvlp.eval.evaluate import evaluate, load_eval_set
from eqvlp.models.clippo import CLIPPOConfig
from eqvlp.train import checkpoint, processes
from eqvlp.train.clipa import TrainPhase, phase_at, resize_state, training_phases
from eqvlp.train.config import EvalConfig, TrainConfig, dotted_fields, finalize, to_json
from eqvlp.train.cotraining import mix_batch, text_pairs
from eqvlp.train.encode import make_encoder
from eqvlp.train.lock import RunLock
from eqvlp.train.optim import SkipNonfiniteState, learning_rate
from eqvlp.train.state import (
    HEADS_REPLICATED,
    compiled,
    init_state,
    make_loss,
    make_step,
    with_optimizer,
)


def _quiet(*args, **kwargs):
    pass


def text_mode(model_config) -> str:
    """CLIPPO reads rendered captions; every other model token ids."""
    return "render" if isinstance(model_config, CLIPPOConfig) else "tokens"


def data_config(cfg: TrainConfig, model_config) -> DataConfig:
    """The training data config, sized for the model (image size, context length, text kind);
    CLIPPO's captions are drawn with the model's own `RenderConfig`, as `model.render` draws
    them at evaluation."""
    mode = text_mode(model_config)
    context = cfg.data.context_length if mode == "render" else context_length(model_config)
    drawn = {"render": model_config.render} if mode == "render" else {}
    return dataclasses.replace(cfg.data, image_size=model_config.vision.image_size, text=mode,
                               context_length=context, **drawn)


def make_tokenizer(cfg: TrainConfig, data: DataConfig, workdir: Path, log=print):
    """The run's tokenizer: a given `tokenizer.json`, the run's own (when resuming), or one
    trained on the training captions and saved as `workdir/tokenizer.json`."""
    from eqvlp.tokenizer import load_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    path = workdir / "tokenizer.json"
    if path.exists():
        return load_tokenizer(path)
    tokenizer = fit_tokenizer(make_source(data), vocab_size=cfg.vocab_size, seed=cfg.seed)
    if jax.process_index() == 0:  # every process trains the same one; one writes it
        tmp = path.with_suffix(".json.tmp")
        tokenizer.save(str(tmp))
        tmp.replace(path)
    log(f"trained a {tokenizer.get_vocab_size()}-token BPE tokenizer on the captions -> {path}")
    return tokenizer


def text_preparer(model, model_config, tokenizer):
    """strings -> the model's text input (token ids, or CLIPPO's rendered images)."""
    if text_mode(model_config) == "render":
        return model.render
    from eqvlp.tokenizer import tokenize

    context = context_length(model_config)
    return lambda texts: tokenize(tokenizer, texts, context_length=context)


def context_length(model_config) -> int:
    """Token ids per caption of a two-tower (its text tower) or one-tower model."""
    text = getattr(model_config, "text", None)
    return text.context_length if text is not None else model_config.context_length


def zeroshot_classes(cfg: TrainConfig):
    """(classnames, templates, label key) of the run's zero-shot evaluation, or Nones."""
    from eqvlp.eval import load_zeroshot_file

    if cfg.eval.zeroshot:
        classnames, templates = load_zeroshot_file(cfg.eval.zeroshot)
        return classnames, templates, "label"
    if cfg.eval.data == "shapes":
        from eqvlp.data import zeroshot_task

        task = zeroshot_task(cfg.eval.zeroshot_task)
        return list(task.classnames), list(task.templates), task.label_key
    return None, None, "label"


def check_objectives(cfg: TrainConfig, model_config) -> None:
    """Clear errors for combinations of loss, data and model that the loop does not train."""
    rendered = text_mode(model_config) == "render"
    if cfg.data.views > 1 and cfg.loss.name != "rocket":
        raise ValueError(f"data.views={cfg.data.views} gives multi-view batches, which only "
                         "clip-rocket trains: set loss.name=rocket (or data.views=1)")
    if cfg.loss.cotraining > 0:
        if not rendered:
            raise ValueError("loss.cotraining is CLIPPO's text-pair co-training and needs "
                             "rendered text: use a CLIPPO model (--config clippo-tiny) or set "
                             "loss.cotraining=0")
        if cfg.data.views > 1:
            raise ValueError("loss.cotraining mixes single-view batches: set data.views=1")


def skipped_steps(opt_state) -> int:
    """Steps skipped for a non-finite loss or gradient (0 without the guard)."""
    return int(opt_state.skipped) if isinstance(opt_state, SkipNonfiniteState) else 0


# What a resumed run may change: where and how often it reports, how long it runs, how it is
# laid out on devices and fed. Everything else decides what the checkpointed state means.
RESUMABLE_KEYS = ("workdir", "steps", "checkpoint_every", "keep_checkpoints", "log_every",
                  "log_samples", "remat", "tokenizer", "data.workers", "data.worker_buffer",
                  "data.cache_dir")
RESUMABLE_PREFIXES = ("eval.", "mesh.")
DERIVED_KEYS = ("data.seed", "data.batch_size")  # copies of seed and batch_size (finalize)


def fingerprint(cfg: TrainConfig) -> dict:
    """The config keys (dotted) and values a checkpoint's state depends on: the model, data,
    loss, optimiser, seed, batch and CLIPA settings. Saved with every checkpoint."""
    full = dataclasses.replace(cfg, model=cfg.model_config())
    out = {}
    for key, value in dotted_fields(full).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            continue
        if key in RESUMABLE_KEYS + DERIVED_KEYS or key.startswith(RESUMABLE_PREFIXES) or \
                key.endswith(".remat"):
            continue
        out[key] = json.loads(json.dumps(to_json(value), default=repr))
    return out


def check_resume(cfg: TrainConfig, extra: dict, step: int, ckpt_dir: Path,
                 allow_config_change: bool) -> None:
    """Refuses a checkpoint written under another config (another seed, model, loss, ...)."""
    saved = extra.get("fingerprint")
    if saved is None or allow_config_change:
        return
    now = fingerprint(cfg)
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k, "-") != now.get(k, "-"))
    if changed:
        shown = "; ".join(f"{k}: {saved.get(k, '-')!r} -> {now.get(k, '-')!r}"
                          for k in changed[:6]) + ("; ..." if len(changed) > 6 else "")
        raise ValueError(
            f"checkpoint step {step} in {ckpt_dir} was written by a run with another config "
            f"({shown}): resuming would mix two runs. Give this run another --workdir, or pass "
            "--allow-config-change (train(..., allow_config_change=True)) to resume anyway")


def check_run(cfg: TrainConfig) -> None:
    """Clear errors for run settings the loop cannot honour, before any work."""
    for key in ("checkpoint_every", "log_every"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1 step, got {getattr(cfg, key)} (the last step "
                             f"is always logged and checkpointed: set {key}={cfg.steps} for "
                             "only that)")
    if cfg.eval.every < 0:
        raise ValueError(f"eval.every must be >= 0 (0: only at the end), got {cfg.eval.every}")


def prepare_run_directory(workdir: Path) -> Path:
    """Creates `workdir/checkpoints/` and proves it writable and shared by every process, so
    that a bad directory fails before step 1, not at the first checkpoint. Returns it."""
    ckpt_dir = workdir / "checkpoints"
    try:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        probe = ckpt_dir / f".write-test-{os.getpid()}-{jax.process_index()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise OSError(f"run directory {workdir} is not writable ({error.strerror or error}"
                      f"{': ' + str(error.filename) if error.filename else ''}): give another "
                      "--workdir") from None
    processes.check_shared(ckpt_dir, "run directory")
    return ckpt_dir


def resume_point(cfg: TrainConfig, ckpt_dir: Path, allow_config_change: bool) -> int:
    """The newest checkpoint step whose metadata is intact and whose config matches (0: none);
    a step past `cfg.steps` is an error (the run already went further)."""
    for step in reversed(checkpoint.committed_steps(ckpt_dir)):
        try:
            extra = checkpoint.read_metadata(ckpt_dir, step)["extra"]
        except checkpoint.CheckpointError:
            continue  # `_restore` reports it and sets it aside
        check_resume(cfg, extra, step, ckpt_dir, allow_config_change)
        if step > cfg.steps:
            raise ValueError(f"{ckpt_dir} holds a checkpoint at step {step}, past steps="
                             f"{cfg.steps}: give --steps >= {step} to continue the run, or "
                             f"evaluate it with eqvlp eval --checkpoint {ckpt_dir.parent}")
        return step
    return 0


def train(cfg: TrainConfig, *, log=print, progress: bool = True,
          allow_config_change: bool = False) -> dict:
    """Runs (or resumes) `cfg` in `cfg.workdir` and returns the results also written to
    `workdir/results.json`.

    With CLIPA (`cfg.clipa.fraction` > 0) the run has two phases (`eqvlp.train.clipa`): at the
    change the model is resized, the optimiser state carried over, a new step jitted and the
    data continued at full size; a checkpoint's step decides the phase it is restored into.

    The run holds `workdir/LOCK` while it runs (a second run on the same directory stops with
    an error); it resumes from the newest intact checkpoint (damaged ones are set aside as
    `step_N.damaged`, with a warning) and refuses one written under another config unless
    `allow_config_change`. A run already at `cfg.steps` returns its `results.json`.
    """
    cfg = finalize(cfg)
    check_run(cfg)
    main_process = jax.process_index() == 0
    log = log if main_process else _quiet
    workdir = Path(cfg.workdir)
    ckpt_dir = prepare_run_directory(workdir)
    with RunLock(workdir, log=log):
        return _train(cfg, workdir, ckpt_dir, log=log, progress=progress,
                      allow_config_change=allow_config_change)


def _restore(cfg: TrainConfig, ckpt_dir: Path, phases, rules, mesh, log):
    """`(start, phase, state, optimizer, data_state)` from the newest intact checkpoint (step
    0 and a new state when there is none). Damaged checkpoints are set aside once an intact one
    is found; with none intact the run stops."""
    damaged: list[tuple[int, str]] = []
    for step in checkpoint.committed_steps(ckpt_dir)[::-1] or [0]:
        phase = phase_at(phases, max(step - 1, 0))
        state, optimizer = with_optimizer(init_state(cfg, phase.model_config, rules, mesh), cfg,
                                          rules, mesh)
        if not step:
            return 0, phase, state, optimizer, None
        arrays, static = eqx.partition(state, eqx.is_array)
        try:
            arrays, _ = checkpoint.restore(ckpt_dir, arrays, step=step)
            data_state = _read_data_state(ckpt_dir, step)
        except checkpoint.CheckpointError as error:
            log(f"warning: checkpoint step {step} is damaged, trying an older one: {error}")
            damaged.append((step, str(error)))
            continue
        for bad, _ in damaged:
            moved = checkpoint.set_aside(ckpt_dir, bad)
            log(f"warning: set the damaged checkpoint aside as {moved}")
        log(f"resumed from step {step} ({ckpt_dir})")
        return step, phase, eqx.combine(arrays, static), optimizer, data_state
    raise checkpoint.CheckpointError(
        f"no intact checkpoint in {ckpt_dir} ({len(damaged)} damaged: "
        + "; ".join(f"step {s}: {e}" for s, e in damaged) + "): move them away to start the "
        "run afresh, or restore the directory from a backup")


def _read_data_state(ckpt_dir: Path, step: int):
    """This process's data position saved with checkpoint `step`; a damaged one on any
    process is damage on all of them (every process must fall back to the same step)."""
    problem, state = None, None
    try:
        state = (checkpoint.read_local(ckpt_dir, step) or {}).get("data")
    except checkpoint.CheckpointError as error:
        problem = str(error)
    damaged = processes.agree(f"local-{step}", problem)
    if damaged:
        raise checkpoint.CheckpointError(problem or f"the data position of process(es) "
                                         f"{sorted(damaged)} is damaged: "
                                         f"{next(iter(damaged.values()))}")
    return state


def _train(cfg: TrainConfig, workdir: Path, ckpt_dir: Path, *, log, progress: bool,
           allow_config_change: bool) -> dict:
    main_process = jax.process_index() == 0
    start = resume_point(cfg, ckpt_dir, allow_config_change)
    if start == cfg.steps and (workdir / "results.json").exists():
        log(f"the run in {workdir} already finished its {cfg.steps} steps: its results.json "
            "is below (give a larger --steps to train on)")
        return json.loads((workdir / "results.json").read_text())
    if main_process:  # what `load_run` and `eqvlp eval --checkpoint` rebuild the run from
        (workdir / "config.json").write_text(json.dumps(to_json(cfg), indent=1))

    mesh = sharding.make_mesh(data=cfg.mesh.data, fsdp=cfg.mesh.fsdp, tensor=cfg.mesh.tensor)
    rules = HEADS_REPLICATED + sharding.rules(cfg.mesh.rules)
    model_config = cfg.model_config()
    check_objectives(cfg, model_config)
    data = data_config(cfg, model_config)
    tokenizer = make_tokenizer(cfg, data, workdir, log) if data.text == "tokens" else None
    phases = training_phases(cfg, model_config, data)
    pairs = text_pairs(cfg) if cfg.loss.cotraining > 0 else None
    schedule = learning_rate(cfg.optim, cfg.steps)

    # A checkpoint after `start` steps has the shapes of the phase that trained its last step.
    start, phase, state, optimizer, data_state = _restore(cfg, ckpt_dir, phases, rules, mesh,
                                                          log)
    saved_with = {"fingerprint": fingerprint(cfg)}
    loader = Loader(phase.data, tokenizer=tokenizer, state=data_state)

    mean_std = normalization(cfg.normalization)
    loss_fn = make_loss(cfg, model_config, mesh)
    replicated = jax.sharding.NamedSharding(mesh, jax.P())
    run_key = dataclasses.replace(cfg, workdir="", eval=EvalConfig(), log_every=1,
                                  checkpoint_every=1, keep_checkpoints=1, log_samples=False)

    def jit_step(state: dict, optimizer, phase: TrainPhase):
        """`(arrays, static, step)`: the state split for the jitted step of `phase`."""
        arrays, static = eqx.partition(state, eqx.is_array)
        shardings = jax.tree.map(lambda x: x.sharding, arrays)

        def build():
            encode = make_encoder(lambda x: normalize_images(x, *mean_std),
                                  rendered_text=text_mode(model_config) == "render",
                                  image_mask=phase.image_mask, text_mask=phase.text_mask)
            step_fn = make_step(loss_fn, encode, optimizer, accumulation=cfg.accumulation,
                                seed=cfg.seed, ema_decay=cfg.optim.ema_decay,
                                target_decay=cfg.loss.target_decay)

            def _step(arrays, batch, step):
                new, metrics = step_fn(eqx.combine(arrays, static), batch, step)
                return eqx.filter(new, eqx.is_array), metrics

            return jax.jit(_step, out_shardings=(shardings, replicated), donate_argnums=(0,))

        key = (run_key, phase, jax.tree.structure(state), tuple(jax.tree.leaves(shardings)), mesh)
        return arrays, static, compiled(key, build)

    arrays, static, jitted = jit_step(state, optimizer, phase)
    del state  # its arrays are donated to the step from now on

    classnames, templates, label_key = zeroshot_classes(cfg)
    tasks = tuple(t for t in cfg.eval.tasks if t != "zeroshot" or classnames)
    eval_sets: dict = {}  # by image size: CLIPA's reduced phase evaluates at its own size

    def eval_set(size):
        if size not in eval_sets:
            eval_data = dataclasses.replace(
                data, image_size=size, data=cfg.eval.data, split=cfg.eval.split,
                num_samples=cfg.eval.num_samples, label_key=label_key, workers=0)
            eval_sets[size] = load_eval_set(eval_data, num_samples=cfg.eval.num_samples)
        return eval_sets[size]

    def pair_groups(eval_set):
        """The embedded test split: zero-shot on seen and on unseen colour+shape pairs apart."""
        if cfg.eval.data != "shapes" or label_key != "shape_colour":
            return None
        held = held_out_mask(eval_set.keys, config=data.shapes)
        return {"seen_pairs": ~held, "unseen_pairs": held} if held.any() else None

    groups = None  # the same samples at every image size: flagged once
    if tasks:  # bad evaluation data fails now, not after training
        groups = pair_groups(eval_set(phase.data.image_size))

    def run_eval() -> dict:
        evaluated = eqx.combine(arrays, static)
        evaluated = evaluated["ema"] if "ema" in evaluated else evaluated["model"]
        prepare = text_preparer(evaluated, phase.model_config, tokenizer)
        batch = cfg.eval.batch_size - cfg.eval.batch_size % math.prod(
            mesh.shape[a] for a in sharding.BATCH_AXES)
        with jax.set_mesh(mesh):
            return evaluate(evaluated, eval_set(phase.data.image_size), prepare_text=prepare,
                            normalize=mean_std, classnames=classnames, templates=templates,
                            tasks=tasks, batch_size=batch, mesh=mesh, groups=groups)

    metrics_file = (workdir / "metrics.jsonl").open("a") if main_process else None
    samples_file = None
    if cfg.log_samples:
        samples_file = (workdir / f"samples_{jax.process_index()}.jsonl").open("a")

    def record(entry: dict):
        if metrics_file is not None:
            metrics_file.write(json.dumps(entry) + "\n")
            metrics_file.flush()

    bar = None
    if progress and main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    losses, images_seen = [], 0
    started = time.perf_counter()
    timed_from, timed_images = started, 0
    results_eval: dict = {}
    try:
        with jax.set_mesh(mesh):
            for step in range(start, cfg.steps):
                if step >= phase.stop:  # CLIPA: the reduced phase is over
                    old = phase
                    phase = phase_at(phases, step)
                    state = resize_state(eqx.combine(arrays, static), phase)
                    state, optimizer = with_optimizer(state, cfg, rules, mesh)
                    arrays, static, jitted = jit_step(state, optimizer, phase)
                    del state
                    loader_state = loader.state()
                    loader.close()
                    loader = Loader(phase.data, tokenizer=tokenizer, state=loader_state)
                    log(f"step {step}: CLIPA phase '{phase.name}' starts: images "
                        f"{old.data.image_size} -> {phase.data.image_size} px, position embeddings "
                        "resampled, masks off, Adam moments kept except for resized leaves")
                host = next(loader)
                if pairs is not None:
                    host = mix_batch(host, pairs, fraction=cfg.loss.cotraining, seed=cfg.seed,
                                     step=step, render=phase.data.render,
                                     process_index=jax.process_index())
                batch = global_batch(host, mesh, fields=("image", "text"))
                if samples_file is not None:
                    samples_file.write(json.dumps({"step": step + 1, "keys": batch["key"]}) + "\n")
                arrays, metrics = jitted(arrays, {"image": batch["image"], "text": batch["text"]},
                                         np.int32(step))
                images_seen += cfg.batch_size
                timed_images += cfg.batch_size
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps or step == start:
                    loss = float(metrics["loss"])
                    losses.append((done, loss))
                    now = time.perf_counter()
                    rate = timed_images / max(now - timed_from, 1e-9)
                    timed_from, timed_images = now, 0
                    entry = {"step": done, "loss": loss, "grad_norm": float(metrics["grad_norm"]),
                             **{k: float(v) for k, v in metrics.items() if k.startswith("loss_")},
                             "lr": float(schedule(step)), "images_per_s": rate, "phase": phase.name,
                             "skipped_steps": skipped_steps(arrays["opt_state"]),
                             "data_skipped": dict(loader.skipped.counts)}
                    if pairs is not None:
                        entry["text_pairs"] = int(host["is_text_pair"].sum()) * jax.process_count()
                    record(entry)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
                if bar is not None:
                    bar.update(1)
                if tasks and ((cfg.eval.every and done % cfg.eval.every == 0) or done == cfg.steps):
                    results_eval = run_eval()
                    record({"step": done, "eval": results_eval, "phase": phase.name})
                    log(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in results_eval.items()
                                                     if isinstance(v, float)))
                if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                    checkpoint.save(ckpt_dir, done, arrays, {"step": done, **saved_with},
                                    local={"data": loader.state()})
                    checkpoint.prune(ckpt_dir, cfg.keep_checkpoints)
            if start >= cfg.steps and tasks:  # finished, but results.json was never written
                results_eval = run_eval()
    except BaseException:  # an error, Ctrl-C or SIGTERM: no worker process outlives the run
        loader.close()
        raise
    wall = time.perf_counter() - started
    if bar is not None:
        bar.close()
    loader.close()
    for file in (metrics_file, samples_file):
        if file is not None:
            file.close()
    results = {
        "steps": cfg.steps, "resumed_from": start, "wall_s": wall,
        "images_per_s": images_seen / wall if wall > 0 else 0.0,
        "final_loss": losses[-1][1] if losses else None,
        "skipped_steps": skipped_steps(arrays["opt_state"]),
        "data_skipped": loader.skipped.to_dict()["counts"],
        "data_skipped_examples": loader.skipped.to_dict()["examples"],
        **results_eval,
        "processes": jax.process_count(), "devices": jax.device_count(),
    }
    if main_process:
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
        plot_curves(workdir / "metrics.jsonl", workdir / "curves.png")
    return results


def plot_curves(metrics_path: Path, out: Path) -> None:
    """Loss, learning rate and evaluation metrics against steps, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_rows, eval_rows = [], []
    for line in metrics_path.read_text().splitlines():
        entry = json.loads(line)
        (eval_rows if "eval" in entry else train_rows).append(entry)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in train_rows]
    axes[0].plot(steps, [r["loss"] for r in train_rows])
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [r["lr"] for r in train_rows])
    axes[1].set(title="learning rate", xlabel="step")
    for key in ("zeroshot_top1", "i2t_r1", "t2i_r1"):
        points = [(r["step"], r["eval"][key]) for r in eval_rows if key in r["eval"]]
        if points:
            axes[2].plot(*zip(*points), marker="o", label=key)
    axes[2].set(title="evaluation", xlabel="step", ylim=(0, 1))
    if eval_rows:
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
