"""Run under the deepspeed launcher: build a ZeRO-3 run and dump what each rank really holds (JSON)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from megaprompt.config import parse_args  # noqa: E402
from megaprompt.engine import build, train  # noqa: E402
from megaprompt.engine.distributed import destroy  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]   # the launcher adds --local_rank=N
    out_json = args[0]
    run = build(parse_args(args[1:]))
    train(run)          # one real optimizer step, so Adam has created its state
    opt = run.engine.optimizer
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    frozen = [p for p in run.model.parameters() if not p.requires_grad]
    adam = opt.optimizer
    state_numel = sum(t.numel() for s in adam.state.values() for t in s.values() if hasattr(t, "numel") and t.dim())
    record = {
        "rank": run.rank, "world": run.world,
        "fp32_flat": [int(t.numel()) for t in opt.fp32_partitioned_groups_flat],
        "trainable_ds_numel": [int(p.ds_numel) for p in trainable],
        "trainable_total": int(sum(p.ds_numel for p in trainable)),
        "frozen": [[int(p.ds_numel), int(p.ds_tensor.numel()), int(p.numel())] for p in frozen],
        "adam_state_numel": int(state_numel),
        "counts": [run.counts.trainable, run.counts.total],
    }
    Path(f"{out_json}.rank{run.rank}").write_text(json.dumps(record))
    destroy()


if __name__ == "__main__":
    main()
