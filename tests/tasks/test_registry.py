"""The task registry: every task constructs, declares a valid head/metric/splits, and unknown names fail
with the closest valid name."""
from __future__ import annotations

import pytest

from megaprompt.tasks import HEAD_KINDS, TASKS, get_task

EXPECTED = {"demo", "boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc", "cola", "sst2", "mrpc", "qqp",
            "stsb", "mnli", "qnli", "glue_rte", "wnli", "conll03", "conll04", "ontonotes", "conll05", "conll12",
            "squad", "squad_v2", "generic_cls", "generic_reg", "generic_tag"}
HEADS = {"copa": "mc", "conll03": "tag", "conll05": "tag", "squad": "span", "squad_v2": "span", "stsb": "reg",
         "rte": "cls", "record": "cls", "generic_tag": "tag", "generic_reg": "reg"}
METRICS = {"cola": "mcc", "stsb": "pearson", "multirc": "f1a", "record": "f1", "conll03": "f1", "squad": "f1",
           "cb": "accuracy", "mrpc": "accuracy", "demo": "accuracy"}


def test_all_tasks_listed():
    assert set(TASKS) == EXPECTED
    assert TASKS == sorted(TASKS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_protocol(name):
    task = get_task(name)
    assert task.name == name
    assert task.head in HEAD_KINDS
    assert task.metric and task.metric == task.metric.lower()
    assert "train" in task.splits and "dev" in task.splits
    if name in HEADS:
        assert task.head == HEADS[name]
    if name in METRICS:
        assert task.metric == METRICS[name]
    if task.head in ("cls", "mc") and name not in ("generic_cls",):
        assert len(task.label_names) >= 2


def test_aliases_and_case():
    assert get_task("SST-2").name == "sst2"
    assert get_task("CoNLL2003").name == "conll03"
    assert get_task("squad2.0").name == "squad_v2"


def test_unknown_task_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown task 'conl03'.*did you mean 'conll03'.*valid tasks: .*boolq"):
        get_task("conl03")


def test_hub_fallback_fails_clearly_offline(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("no internet")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=r"task 'boolq': could not load Hugging Face dataset super_glue/boolq.*"
                                           r"pass --data_dir"):
        get_task("boolq").load(None, "train")
    with pytest.raises(ValueError, match="needs --data_dir"):
        get_task("conll04").load(None, "train")
