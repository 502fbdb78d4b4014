"""The training loop: steps, evaluation, best-dev export, resume checkpoints, preemption, TensorBoard.

One optimizer step = ``grad_accum`` micro-batches per rank; DeepSpeed's ``engine.step()`` is called after
every micro-batch and only updates at the accumulation boundary. Losses stay on the device until the step's
end (``StepTotals``: one collective and one host sync per optimizer step, which also stops a NaN run). The
loop's state is just the global step (data order is a pure function of it, see ``engine.data``), the best
dev metric so far and the evaluation history, so a checkpoint at a step boundary resumes exactly.

Several tasks (``--task rte,cb``): each micro-step trains one task, the same on every rank
(``engine.mixing``), and its batch carries ``task_ids``. Dev metrics are reported per task as
``"<task>/<metric>"`` plus ``"mean"`` (the mean of the tasks' primary metrics); the best checkpoint is chosen
on ``mean`` or on ``--select_on <task>``'s primary metric. One task keeps the plain metric names.
"""
from __future__ import annotations

import json
import math
import resource
import time
from typing import Any

import numpy as np
import torch

from megaprompt.engine import checkpoint as ckpt
from megaprompt.engine.build import Run
from megaprompt.engine.data import split_outputs, to_device, train_loader
from megaprompt.engine.distributed import is_rank0, log
from megaprompt.engine.export import export_trainable
from megaprompt.engine.mixing import MultiTaskStream
from megaprompt.engine.preemption import PreemptionHandler
from megaprompt.engine.tb import Board
from megaprompt.engine.totals import StepTotals
from megaprompt.files import atomic_write_text


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux reports KiB


def evaluate(run: Run) -> dict[str, float]:
    """Dev metrics (percent). Every rank runs its shard of each task's dev set (tasks in order, so ranks stay
    in lockstep); outputs are gathered so all ranks agree. Several tasks: ``task/metric`` keys and ``mean``."""
    bs = run.cfg.train.eval_batch_size or 2 * run.cfg.train.batch_size
    run.engine.eval()
    per_task = []
    for t, (task, dev) in enumerate(zip(run.tasks, run.devs)):
        def forward(b: dict[str, torch.Tensor], t: int = t) -> torch.Tensor:
            ids = torch.full((b["input_ids"].shape[0],), t, dtype=torch.long, device=b["input_ids"].device)
            return run.engine(**b, task_ids=ids)["logits"]
        outputs = split_outputs(forward, task.head, dev, run.tokenizer.pad_token_id, bs, run.rank, run.world,
                                run.device)
        per_task.append({k: float(v) for k, v in task.evaluate(outputs, dev).items()})
    run.engine.train()
    if len(run.tasks) == 1:
        return per_task[0]
    out = {f"{task.name}/{k}": v for task, m in zip(run.tasks, per_task) for k, v in m.items()}
    out["mean"] = float(np.mean([m[task.metric] for task, m in zip(run.tasks, per_task)]))
    return out


def primary_metric(run: Run) -> str:
    """The dev key the best checkpoint is chosen on."""
    if len(run.tasks) == 1:
        return run.task.metric
    sel = run.cfg.train.select_on
    return "mean" if sel == "mean" else f"{sel}/{next(t.metric for t in run.tasks if t.name == sel)}"


def train(run: Run, preempt: Any = None) -> dict[str, Any]:
    cfg, engine, t = run.cfg, run.engine, run.cfg.train
    stream = MultiTaskStream([len(x) for x in run.trains], t.batch_size, t.grad_accum, run.rank, run.world, t.seed,
                             t.mixing, t.mixing_temperature)
    eval_every = t.eval_every or max(1, sum(len(x) for x in run.trains) // (t.batch_size * t.grad_accum * run.world))
    ckpt_dir = run.out / "checkpoints"
    primary = primary_metric(run)
    state: dict[str, Any] = {"best": None, "best_step": -1, "history": [], "bad_evals": 0,
                             "lineage": [ckpt.new_lineage_id()]}
    step = 0
    resume_from = run.pre.resume_from
    if resume_from is not None:
        state = ckpt.load(engine, resume_from)
        step = state.pop("step")
        state["lineage"] = ckpt.lineage_of(state)
        if run.pre.fork:
            state["lineage"].append(ckpt.new_lineage_id())
            if state["best"] is not None and not (run.out / "export").exists():
                # the best export of the abandoned future was set aside and the fork point's is gone: the
                # fork's own first evaluation becomes its best, so the run always ends with an export
                state.update(best=None, best_step=-1, bad_evals=0)
        log.info("resumed from %s at step %d%s", resume_from, step, " (a fork: a new history)" if run.pre.fork else "")
    first_step = last_saved = step
    if preempt is None:
        preempt = PreemptionHandler(max_requeues=t.max_requeues)
        preempt.install()
    board = Board(run)
    pad = run.tokenizer.pad_token_id
    start, t_last, samples, tokens, losses = time.time(), time.time(), 0, 0, []
    final: dict[str, float] | None = None
    stopped = "done"

    from tqdm import tqdm
    bar = tqdm(total=run.total_steps, initial=step, disable=not is_rank0(), desc="train", dynamic_ncols=True)
    batches = iter(train_loader(run.trains, stream, step, run.total_steps, pad, run.device))
    engine.train()
    while step < run.total_steps:
        totals = StepTotals(run.device, t.grad_accum, run.world)
        for j in range(t.grad_accum):
            host = next(batches)      # one task per micro-step (its task_ids), the same on every rank
            samples += int(host["input_ids"].shape[0])
            tokens += int(host["attention_mask"].sum())          # counted on the host: no device sync
            batch = to_device(host, run.device)
            loss = engine(**batch)["loss"]
            totals.add(loss)                                     # stays on the device
            engine.backward(loss)
            if j == t.grad_accum - 1:
                # one collective per optimizer step, before the boundary engine.step() updates the weights
                step_loss = totals.finish(step + 1)
            engine.step()
        step += 1
        losses.append(step_loss)
        bar.update(1)
        if step == first_step + 1:
            log.info("first step done, %.1f s after this process started", time.time() - _process_start())
        if step % t.log_every == 0 or step == run.total_steps:
            dt = max(time.time() - t_last, 1e-9)
            sps, tps = samples * run.world / dt, tokens * run.world / dt
            board.train(step, float(np.mean(losses)), engine.get_lr()[0], _grad_norm(engine), sps, tps,
                        peak_memory_mb(run.device))
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
            t_last, samples, tokens, losses = time.time(), 0, 0, []
        if step % eval_every == 0 or step == run.total_steps:
            final = evaluate(run)
            state["history"].append({"step": step, **final})
            board.eval(step, final)
            improved = state["best"] is None or final[primary] > state["best"][primary]
            if improved:
                state["best"], state["best_step"], state["bad_evals"] = dict(final), step, 0
                export_trainable(run, run.out / "export", extra={"step": step, "dev": final})
            else:
                state["bad_evals"] += 1
            log.info("step %d | dev %s | best %s=%.2f @ %d", step, _fmt(final), primary, state["best"][primary],
                     state["best_step"])
            if t.early_stopping and state["bad_evals"] >= t.early_stopping:
                stopped = f"early stopping after {state['bad_evals']} evaluations without improvement"
                log.info(stopped)
                break
        if t.save_every and step % t.save_every == 0 and step < run.total_steps:
            ckpt.save(engine, ckpt_dir, step, state, t.keep_checkpoints)
            last_saved = step
        # should_stop() is collective: every rank calls it at every step boundary, so all stop together
        preempted = preempt.should_stop()
        if preempted or (step == t.stop_at_step and step < run.total_steps):
            if last_saved != step:   # never delete-and-rewrite the checkpoint just written
                ckpt.save(engine, ckpt_dir, step, state, t.keep_checkpoints)
            requeued = preempt.requeue() if preempted and is_rank0() else False
            log.warning("%s at step %d: checkpoint saved%s (continue with --resume auto)",
                        "preempted" if preempted else "stop_at_step reached", step,
                        ", job requeued" if requeued else "")
            bar.close()
            board.close()
            return {"preempted": True, "step": step}
    bar.close()
    if last_saved != step:
        ckpt.save(engine, ckpt_dir, step, state, t.keep_checkpoints)
    wall = time.time() - start
    if final is None:    # resumed after the last evaluation had already happened
        final = state["history"][-1] if state["history"] else evaluate(run)
        final = {k: v for k, v in final.items() if k != "step"}
    metrics = {
        "task": cfg.data.task, "tasks": [task.name for task in run.tasks], "method": cfg.prompt.method,
        "backbone": cfg.backbone,
        "final": final, "best": {**(state["best"] or final), "step": state["best_step"]},
        "primary_metric": primary, "trainable_params": run.counts.trainable, "total_params": run.counts.total,
        "trainable_ratio": run.counts.ratio, "steps": step, "wall_s": round(wall, 2),
        # throughput of this job only: a resumed job did not run the steps before its checkpoint
        "samples_per_s": round((step - first_step) * t.batch_size * t.grad_accum * run.world / max(wall, 1e-9), 2),
        "world_size": run.world, "precision": run.precision, "stopped": stopped,
        "peak_mem_mb": round(peak_memory_mb(run.device), 1),
    }
    if is_rank0():
        atomic_write_text(run.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    board.hparams(metrics)
    board.close()
    return metrics


def _process_start() -> float:
    import psutil     # a DeepSpeed dependency
    return psutil.Process().create_time()


def _grad_norm(engine: Any) -> float:
    g = engine.get_global_grad_norm()
    g = float(g) if g is not None else float("nan")
    return g if math.isfinite(g) else float("nan")


def _fmt(m: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in m.items() if isinstance(v, (int, float)))


__all__ = ["evaluate", "peak_memory_mb", "train"]
