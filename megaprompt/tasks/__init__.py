"""Task registry: ``get_task(name)`` returns a ``Task`` (see ``megaprompt.tasks.base``).

Engine usage::

    task = get_task(name, data_dir=data_dir)          # data_dir only matters for the generic tasks
    enc = load_split(task, data_dir, "train", tokenizer, max_seq_len)   # read + encode (Arrow) + cache
    batch = enc.model_inputs(indices, pad_id)         # padded tensors of the keys in MODEL_KEYS; run the model
    metrics = task.evaluate(per_feature_logits, enc)  # {"accuracy": 91.2, ...}; primary = task.metric
    preds = task.predict(per_feature_logits, enc)     # per-example predictions for submission files
"""
from __future__ import annotations

import importlib
from typing import Any

from megaprompt.tasks.base import (HEAD_KINDS, MODEL_KEYS, BaseTask, EncodedSplit, Task,  # noqa: F401
                                   canonical_split, closest)
from megaprompt.tasks.pipeline import load_split  # noqa: F401

# name -> "module:Class"  (imported lazily so one family's import cost is not paid by others)
_REGISTRY: dict[str, str] = {
    "demo": "demo:DemoTask",
    # SuperGLUE
    "boolq": "superglue:BoolQ", "cb": "superglue:CB", "copa": "superglue:COPA", "multirc": "superglue:MultiRC",
    "record": "superglue:ReCoRD", "rte": "superglue:RTE", "wic": "superglue:WiC", "wsc": "superglue:WSC",
    # GLUE
    "cola": "glue:CoLA", "sst2": "glue:SST2", "mrpc": "glue:MRPC", "qqp": "glue:QQP", "stsb": "glue:STSB",
    "mnli": "glue:MNLI", "qnli": "glue:QNLI", "glue_rte": "glue:GlueRTE", "wnli": "glue:WNLI",
    # NER / SRL / QA
    "conll03": "ner:CoNLL03", "conll04": "ner:CoNLL04", "ontonotes": "ner:OntoNotes",
    "conll05": "srl:CoNLL05", "conll12": "srl:CoNLL12",
    "squad": "qa:SQuAD", "squad_v2": "qa:SQuADv2",
    # generic files
    "generic_cls": "generic:GenericClassification", "generic_reg": "generic:GenericRegression",
    "generic_tag": "generic:GenericTagging",
}
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "squad1.1": "squad", "squad2.0": "squad_v2", "squad2": "squad_v2",
            "conll2003": "conll03", "conll2004": "conll04", "conll2005": "conll05", "conll2012": "conll12",
            "superglue_rte": "rte", "mnli_mismatched": "mnli", "generic": "generic_cls"}

TASKS: list[str] = sorted(_REGISTRY)

__all__ = ["HEAD_KINDS", "MODEL_KEYS", "TASKS", "BaseTask", "EncodedSplit", "Task", "canonical_split", "get_task",
           "load_split"]


def get_task(name: str, data_dir: str | None = None, **options: Any) -> Task:
    """The task called ``name`` (case-insensitive).

    ``data_dir`` lets tasks whose label set comes from the data (SRL, generic) read it from the training file
    (or ``labels.txt``); they also accept ``label_names=[...]`` (e.g. restored from an export).
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}{closest(key, TASKS)}; valid tasks: {', '.join(TASKS)}")
    module, cls = _REGISTRY[key].split(":")
    task_cls = getattr(importlib.import_module(f"megaprompt.tasks.{module}"), cls)
    if getattr(task_cls, "needs_data_dir", False):
        return task_cls(data_dir=data_dir, **options)
    return task_cls(**options)
