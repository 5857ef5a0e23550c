"""`eqvlp train`: pre-train a contrastive model on shards or the embedded dataset, evaluate it,
and resume exactly.

One function, `train(config)`, reads top to bottom: mesh and model, tokenizer and data, the
optimiser, restore, then the loop (step, log, evaluate, checkpoint) and the run's outputs in its
directory: `metrics.jsonl`, `results.json`, `curves.png`, `tokenizer.json`, `checkpoints/`.
"""

import dataclasses
import json
import math
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from eqvlp import models, sharding
from eqvlp.data import DataConfig, Loader, global_batch, normalization, normalize_images
from eqvlp.data import fit_tokenizer, make_source
from eqvlp.eval.evaluate import evaluate, load_eval_set
from eqvlp.models.clippo import CLIPPOConfig
from eqvlp.train import checkpoint
from eqvlp.train.accumulate import accumulated_value_and_grad
from eqvlp.train.config import TrainConfig, finalize
from eqvlp.train.objective import make_objective
from eqvlp.train.optim import SkipNonfiniteState, ema_params, learning_rate, make_optimizer


def _quiet(*args, **kwargs):
    pass


def text_mode(model_config) -> str:
    """CLIPPO reads rendered captions; every other model token ids."""
    return "render" if isinstance(model_config, CLIPPOConfig) else "tokens"


def data_config(cfg: TrainConfig, model_config) -> DataConfig:
    """The training data config, sized for the model (image size, context length, text kind)."""
    mode = text_mode(model_config)
    context = cfg.data.context_length if mode == "render" else context_length(model_config)
    return dataclasses.replace(cfg.data, image_size=model_config.vision.image_size, text=mode,
                               context_length=context)


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


def make_step(objective, optimizer, normalize, *, accumulation: int, ema_decay: float | None):
    """`step(state, batch) -> (state, metrics)`: exact accumulation, update, EMA."""

    def embed(model, batch):
        return model.encode_image(normalize(batch["image"])), model.encode_text(batch["text"])

    def loss_fn(model, embeddings):
        return objective(model, *embeddings)

    def step(state, batch):
        model = state["model"]
        loss, grads = accumulated_value_and_grad(embed, loss_fn, model, batch,
                                                 micro_batches=accumulation)
        params = eqx.filter(model, eqx.is_array)
        updates, opt_state = optimizer.update(grads, state["opt_state"], params, loss=loss)
        new = dict(state, model=eqx.apply_updates(model, updates), opt_state=opt_state)
        if ema_decay is not None:
            new["ema"] = ema_params(state["ema"], new["model"], ema_decay)
        leaves = [g for g in jax.tree.leaves(grads) if g is not None]
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in leaves))
        return new, {"loss": loss, "grad_norm": grad_norm}

    return step


def skipped_steps(opt_state) -> int:
    """Steps skipped for a non-finite loss or gradient (0 without the guard)."""
    return int(opt_state.skipped) if isinstance(opt_state, SkipNonfiniteState) else 0


def train(cfg: TrainConfig, *, log=print, progress: bool = True) -> dict:
    """Runs (or resumes) `cfg` in `cfg.workdir` and returns the results also written to
    `workdir/results.json`."""
    cfg = finalize(cfg)
    main_process = jax.process_index() == 0
    log = log if main_process else _quiet
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = workdir / "checkpoints"

    mesh = sharding.make_mesh(data=cfg.mesh.data, fsdp=cfg.mesh.fsdp, tensor=cfg.mesh.tensor)
    rules = sharding.rules(cfg.mesh.rules)
    model_config = cfg.model_config()
    model_class = models.presets.MODEL_CLASSES[type(model_config)]
    model = sharding.init_sharded(lambda: model_class(model_config, key=jax.random.key(cfg.seed)),
                                  rules, mesh)

    data = data_config(cfg, model_config)
    tokenizer = make_tokenizer(cfg, data, workdir, log) if data.text == "tokens" else None
    optimizer = make_optimizer(cfg.optim, model, cfg.steps)
    schedule = learning_rate(cfg.optim, cfg.steps)
    params = eqx.filter(model, eqx.is_array)
    opt_shardings = sharding.shardings(jax.eval_shape(optimizer.init, params), rules, mesh)
    opt_state = jax.jit(optimizer.init, out_shardings=opt_shardings)(params)
    state = {"model": model, "opt_state": opt_state}
    if cfg.optim.ema_decay is not None:
        state["ema"] = jax.tree.map(lambda x: x.copy() if eqx.is_array(x) else x, model)
    state_shardings = jax.tree.map(lambda x: x.sharding, eqx.filter(state, eqx.is_array))

    start, data_state = 0, None
    if checkpoint.latest_step(ckpt_dir) is not None:
        arrays, static = eqx.partition(state, eqx.is_array)
        arrays, extra = checkpoint.restore(ckpt_dir, arrays, state_shardings)
        state = eqx.combine(arrays, static)
        start = extra["step"]
        data_state = (checkpoint.read_local(ckpt_dir, start) or {}).get("data")
        log(f"resumed from step {start} ({ckpt_dir})")
    loader = Loader(data, tokenizer=tokenizer, state=data_state)

    mean_std = normalization(cfg.normalization)
    objective = make_objective(cfg.loss.name, model_loss=model_config.loss,
                               label_smoothing=cfg.loss.label_smoothing,
                               chunk_size=cfg.loss.chunk_size, mesh=mesh)
    step_fn = make_step(objective, optimizer, lambda x: normalize_images(x, *mean_std),
                        accumulation=cfg.accumulation, ema_decay=cfg.optim.ema_decay)
    arrays, static = eqx.partition(state, eqx.is_array)
    replicated = jax.sharding.NamedSharding(mesh, jax.P())

    def _step(arrays, batch):
        new, metrics = step_fn(eqx.combine(arrays, static), batch)
        return eqx.filter(new, eqx.is_array), metrics

    jitted = jax.jit(_step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))

    classnames, templates, label_key = zeroshot_classes(cfg)
    eval_set = None
    if cfg.eval.tasks:
        eval_data = dataclasses.replace(
            data, data=cfg.eval.data, split=cfg.eval.split, num_samples=cfg.eval.num_samples,
            label_key=label_key, workers=0)
        eval_set = load_eval_set(eval_data, num_samples=cfg.eval.num_samples)
        tasks = tuple(t for t in cfg.eval.tasks if t != "zeroshot" or classnames)

    def run_eval() -> dict:
        evaluated = eqx.combine(arrays, static)
        evaluated = evaluated["ema"] if "ema" in evaluated else evaluated["model"]
        prepare = text_preparer(evaluated, model_config, tokenizer)
        batch = cfg.eval.batch_size - cfg.eval.batch_size % math.prod(
            mesh.shape[a] for a in sharding.BATCH_AXES)
        with jax.set_mesh(mesh):
            return evaluate(evaluated, eval_set, prepare_text=prepare, normalize=mean_std,
                            classnames=classnames, templates=templates, tasks=tasks,
                            batch_size=batch, mesh=mesh)

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
    losses, evals, images_seen = [], [], 0
    started = time.perf_counter()
    timed_from, timed_images = started, 0
    results_eval: dict = {}
    with jax.set_mesh(mesh):
        for step in range(start, cfg.steps):
            batch = global_batch(next(loader), mesh, fields=("image", "text"))
            if samples_file is not None:
                samples_file.write(json.dumps({"step": step + 1, "keys": batch["key"]}) + "\n")
            arrays, metrics = jitted(arrays, {"image": batch["image"], "text": batch["text"]})
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
                         "lr": float(schedule(step)), "images_per_s": rate,
                         "skipped_steps": skipped_steps(arrays["opt_state"]),
                         "data_skipped": dict(loader.skipped.counts)}
                record(entry)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.0f}")
            if bar is not None:
                bar.update(1)
            if eval_set is not None and ((cfg.eval.every and done % cfg.eval.every == 0)
                                         or done == cfg.steps):
                results_eval = run_eval()
                evals.append((done, results_eval))
                record({"step": done, "eval": results_eval})
                log(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in results_eval.items()
                                                 if isinstance(v, float)))
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint.save(ckpt_dir, done, arrays, {"step": done},
                                local={"data": loader.state()})
                checkpoint.prune(ckpt_dir, cfg.keep_checkpoints)
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
