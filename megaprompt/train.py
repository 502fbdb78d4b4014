"""P-Tuning v2 training entry point: parse -> build -> train -> report.

    deepspeed --num_gpus 2 megaprompt/train.py --ds_config ds_configs/zero3.json [--recipe R.yaml] [--flag v ...]

Also runs under torchrun, srun (one task per GPU) and as a single ``python`` process.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):   # run as a script: make the repo importable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megaprompt.config import parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)                 # a bad flag or recipe: one line, exit 2
    from megaprompt.engine import build, train
    from megaprompt.engine.distributed import destroy, log_error
    from megaprompt.engine.preemption import PreemptionHandler
    from megaprompt.engine.report import report
    from megaprompt.errors import UserError
    from megaprompt.rundir import release_all
    preempt = PreemptionHandler(max_requeues=cfg.train.max_requeues)
    preempt.install()   # first: a Slurm signal during model loading must stop at step 1, not kill the ranks
    try:
        run = build(cfg)
        metrics = train(run, preempt)
        report(run, metrics)
    except (UserError, FloatingPointError) as err:
        log_error(err)                     # rank 0: one line on stderr (and in this run's train.log)
        return 2
    finally:
        preempt.uninstall()
        release_all()
        destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
