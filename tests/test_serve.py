"""Serving many exports on one backbone: a mixed batch gives each row what its own trained model gives it alone
(encoder and decoder, prompts of different lengths and layers, a multiple-choice task beside pair tasks);
input order, one-line errors for unknown tasks and foreign exports, the CLI's jsonl contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megaprompt.assemble import save_model_export
from megaprompt.backbones.load import load_backbone, load_tokenizer
from megaprompt.model import TaskSlot, build_model
from megaprompt.prompts import PromptConfig
from megaprompt.serve import Server, main
from megaprompt.tasks import get_task

# (task, prompt_len, prompt_layers): different lengths and layer subsets, so the bank pads and masks per row
TASKS = [("rte", 3, "all"), ("cb", 5, "last:1"), ("copa", 2, "first:1")]
RTE = {"premise": "A dog runs in the park.", "hypothesis": "An animal moves."}
CB = {"premise": "It was not clear that he would come back at all that night.", "hypothesis": "He came back."}
COPA = {"premise": "The man fell.", "choice1": "He slipped.", "choice2": "He sang a song.", "question": "cause"}


def _rows():
    rows = []
    for i in range(4):    # interleaved tasks, different lengths
        rows.append({"task": "cb", "text": CB["premise"][: 20 + 9 * i], "text_pair": CB["hypothesis"]})
        rows.append({"task": "rte", **{k: v + " x" * i for k, v in RTE.items()}})
        rows.append({"task": "copa", "inputs": dict(COPA, premise=COPA["premise"] + " y" * i)})
    return rows


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-llama"])
def exports(request, tmp_path_factory):
    """One export per task, each trained (perturbed) on its own model over the same tiny backbone."""
    backbone_arg = request.param
    root = tmp_path_factory.mktemp(backbone_arg)
    models, paths = {}, []
    for k, (name, plen, layers) in enumerate(TASKS):
        task = get_task(name)
        bb, *_ = load_backbone(backbone_arg, seed=0)
        torch.manual_seed(10 + k)
        cfg = PromptConfig(method="pt2", prompt_len=plen, prompt_layers=layers, prefix_dropout=0.0)
        model = build_model(bb, cfg, [TaskSlot(name, task.head, max(len(task.label_names), 1))], name=backbone_arg,
                            head_dropout=0.0).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.5)
        path = save_model_export(model, root / name, tasks={name: {"label_names": list(task.label_names),
                                                                    "max_seq_len": 48}},
                                 extra={"backbone_arg": backbone_arg, "seed": 0})
        models[name], paths = model, paths + [str(path)]
    return backbone_arg, models, paths


def _alone(models, tokenizer, row):
    """The reference: the row encoded by its task and run through its own (never exported) model alone."""
    name = row["task"]
    task = get_task(name)
    fields = dict(row.get("inputs") or {}, **{k: v for k, v in row.items() if k not in ("task", "inputs")})
    if "text" in fields:
        fields = {task.fields[0]: fields["text"], task.fields[1]: fields["text_pair"]}
    split = task.encode(task.prepare(task.parse_rows([fields], "ref", "test")), tokenizer, 48)
    batch = split.model_inputs([0], tokenizer.pad_token_id)
    with torch.no_grad():
        return models[name](batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                            task=name)["logits"][0].numpy()


def test_mixed_batches_equal_each_task_alone(exports):
    backbone_arg, models, paths = exports
    tokenizer = load_tokenizer(backbone_arg)
    rows = _rows()
    server = Server(paths, batch_size=5)          # batches hold several tasks, padded to different lengths
    outs = server.outputs(rows)
    mixed = {}
    for name, (positions, _, logits) in outs.items():
        for pos, value in zip(positions, logits):
            mixed[pos] = value
    assert sorted(mixed) == list(range(len(rows)))
    for pos, row in enumerate(rows):
        np.testing.assert_allclose(mixed[pos], _alone(models, tokenizer, row), atol=1e-5, rtol=0)
    # the prompts really differ per task: another task's export gives this row other logits
    assert len(server.tasks) == 3 and len({p for p in paths}) == 3
    one = Server(paths, batch_size=1).outputs(rows[:3])
    assert all(np.allclose(one[rows[i]["task"]][2][0], mixed[i], atol=1e-5) for i in range(3))


def test_predictions_in_input_order_and_task_decoding(exports):
    _, models, paths = exports
    rows = _rows()
    preds = Server(paths, batch_size=4).predict(rows)
    # COPA (multiple choice) predicts the choice index; the pair tasks their label names
    labels = {name: (get_task(name).label_names if name != "copa" else [0, 1]) for name, _, _ in TASKS}
    for row, pred in zip(rows, preds):
        assert pred in labels[row["task"]]
    # the decoding is the task's argmax of the row's own logits
    server = Server(paths, batch_size=7)
    outs = server.outputs(rows)
    for name, (positions, split, logits) in outs.items():
        for pos, value in zip(positions, logits):
            assert preds[pos] == labels[name][int(np.argmax(value))]


def test_unknown_task_and_foreign_export_are_one_line_errors(exports, tmp_path, capsys):
    backbone_arg, _, paths = exports
    server = Server(paths[:1])
    from megaprompt.errors import UserError
    with pytest.raises(UserError, match=r"rows:2: task 'cb' is not served \(served: rte\)"):
        server.predict([{"task": "rte", **RTE}, {"task": "cb", **CB}])
    # an export trained on another checkpoint of the same shape (other seed): the fingerprint refuses it
    bb, *_ = load_backbone(backbone_arg, seed=1)
    other = build_model(bb, PromptConfig(method="pt2", prompt_len=2), [TaskSlot("wsc", "cls", 2)], name=backbone_arg)
    foreign = save_model_export(other, tmp_path / "foreign", tasks={"wsc": {"label_names": ["False", "True"]}},
                                extra={"backbone_arg": backbone_arg, "seed": 1})
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"task": "rte", **RTE}) + "\n")
    argv = ["--export", paths[0], "--export", str(foreign), "--input", str(rows), "--output", str(tmp_path / "o")]
    capsys.readouterr()
    assert main(argv + ["--backbone", backbone_arg]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "fingerprint" in err and str(foreign) in err and "Traceback" not in err


def test_cli_writes_jsonl_in_input_order_and_never_overwrites(exports, tmp_path, capsys):
    _, _, paths = exports
    rows = _rows()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(dict(r, idx=i)) + "\n" for i, r in enumerate(rows)))
    out = tmp_path / "preds.jsonl"
    argv = [a for p in paths for a in ("--export", p)] + ["--input", str(tmp_path / "in.jsonl"), "--output", str(out),
                                                         "--batch_size", "4"]
    assert main(argv) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["idx"] for g in got] == list(range(len(rows))) and [g["task"] for g in got] == [r["task"] for r in rows]
    assert [g["prediction"] for g in got] == Server(paths).predict(rows)
    before = out.read_text()
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err and out.read_text() == before
    (tmp_path / "bad.jsonl").write_text(json.dumps({"task": "rte", **RTE}) + "\n{oops\n")
    assert main(argv[:-6] + ["--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "x")]) == 2
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err
