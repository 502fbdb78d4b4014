"""Tiny fixture folders for every registered task, in each task's official file format.

``WRITERS[name](folder)`` writes a handful of train / dev (and, where the benchmark has one, unlabelled test)
examples into ``folder`` and returns the ``--data_dir`` to pass (``None`` for the built-in demo task). Every
train split holds at least one global batch (2 examples); gold labels vary so that every metric is defined
(pearson / mcc need non-constant gold). ``TRAIN_ARGS[name]`` lists the ``train.py`` flags a task needs beyond
``TRAIN_DEFAULTS``; ``train_tiny`` writes a fixture and trains on it in-process (use with the ``train_env``
fixture).

A task added to ``megaprompt.tasks.TASKS`` without a writer here fails ``test_every_task_trains``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

from .test_ner import CONLL03, GOLD_CONLL
from .test_qa import QS, squad_json
from .test_srl import DEV as SRL_DEV
from .test_srl import TRAIN as SRL_TRAIN

T = "\t"
N_TRAIN, N_DEV, N_TEST = 6, 4, 3


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_tsv(path: Path, header: list[str] | None, rows: Iterable[list[Any]]) -> None:
    lines = ([T.join(header)] if header else []) + [T.join(str(c) for c in r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _superglue(d: Path, row: Callable[[int], dict[str, Any]]) -> Path:
    """train.jsonl / val.jsonl / test.jsonl (test without labels), ``row(i)`` one labelled example."""
    write_jsonl(d / "train.jsonl", [row(i) for i in range(N_TRAIN)])
    write_jsonl(d / "val.jsonl", [row(100 + i) for i in range(N_DEV)])
    write_jsonl(d / "test.jsonl", [{k: v for k, v in row(200 + i).items() if k != "label"} for i in range(N_TEST)])
    return d


# ----------------------------------------------------------------------------- SuperGLUE
def write_boolq(d: Path) -> Path:
    return _superglue(d, lambda i: {"question": f"is the water wet {i}", "passage": f"Water number {i} is wet.",
                                    "idx": i, "label": bool(i % 2)})


CB_LABELS = ["entailment", "contradiction", "neutral"]


def write_cb(d: Path) -> Path:
    return _superglue(d, lambda i: {"premise": f"The dog {i} runs in the park.", "hypothesis": "An animal moves.",
                                    "idx": i, "label": CB_LABELS[i % 3]})


def write_copa(d: Path) -> Path:
    return _superglue(d, lambda i: {"premise": f"The man fell {i}.", "choice1": "He slipped.", "choice2": "He sang.",
                                    "question": "cause" if i % 2 else "effect", "idx": i, "label": i % 2})


def _multirc_row(i: int) -> dict[str, Any]:
    qs = [{"idx": 2 * i + q, "question": f"What color is thing {q}?",
           "answers": [{"idx": 4 * i + 2 * q + a, "text": c, "label": int(a == q)}
                       for a, c in enumerate(("blue", "green"))]} for q in range(2)]
    return {"idx": i, "passage": {"text": f"Passage {i}. The sky is blue. The grass is green.", "questions": qs}}


def write_multirc(d: Path) -> Path:
    """Official nesting: passage -> questions -> answers (one binary example per answer)."""
    write_jsonl(d / "train.jsonl", [_multirc_row(i) for i in range(2)])
    write_jsonl(d / "val.jsonl", [_multirc_row(10)])
    test = _multirc_row(20)
    for q in test["passage"]["questions"]:
        for a in q["answers"]:
            del a["label"]
    write_jsonl(d / "test.jsonl", [test])
    return d


def _record_row(i: int, answered: bool = True) -> dict[str, Any]:
    text = "@highlight\nObama visited Paris with Biden."
    ents = [{"start": 11, "end": 15}, {"start": 25, "end": 29}, {"start": 36, "end": 40}]   # inclusive ends
    answer = [("Paris", 25, 29), ("Obama", 11, 15)][i % 2]
    q = {"idx": i, "query": ["@placeholder is a city in France.", "@placeholder was a president."][i % 2]}
    if answered:
        q["answers"] = [{"start": answer[1], "end": answer[2], "text": answer[0]}]
    return {"idx": i, "passage": {"text": text, "entities": ents}, "qas": [q]}


def write_record(d: Path) -> Path:
    write_jsonl(d / "train.jsonl", [_record_row(i) for i in range(4)])
    write_jsonl(d / "val.jsonl", [_record_row(100 + i) for i in range(2)])
    write_jsonl(d / "test.jsonl", [_record_row(200 + i, answered=False) for i in range(2)])
    return d


def write_rte(d: Path) -> Path:
    return _superglue(d, lambda i: {"premise": f"A dog number {i} runs.",
                                    "hypothesis": "An animal moves." if i % 2 else "A cat sleeps.",
                                    "idx": i, "label": "entailment" if i % 2 else "not_entailment"})


def write_wic(d: Path) -> Path:
    return _superglue(d, lambda i: {"word": "bank", "sentence1": "He sat by the bank.",
                                    "sentence2": f"The bank raised rates {i}.", "start1": 14, "end1": 18,
                                    "start2": 4, "end2": 8, "idx": i, "label": bool(i % 2)})


def write_wsc(d: Path) -> Path:
    return _superglue(d, lambda i: {"text": f"Mark told Pete {i} lies . He should know .", "target": {
        "span1_index": 0, "span1_text": "Mark", "span2_index": 6, "span2_text": "He"}, "idx": i, "label": bool(i % 2)})


# ----------------------------------------------------------------------------- GLUE
def _glue(d: Path, header: list[str] | None, row: Callable[[int], list[Any]], test_header: list[str],
          test_row: Callable[[int], list[Any]], dev: str = "dev.tsv", test: str = "test.tsv") -> Path:
    write_tsv(d / "train.tsv", header, [row(i) for i in range(N_TRAIN)])
    write_tsv(d / dev, header, [row(100 + i) for i in range(N_DEV)])
    write_tsv(d / test, test_header, [test_row(200 + i) for i in range(N_TEST)])
    return d


def write_cola(d: Path) -> Path:
    """train/dev without header (source, label, author label, sentence); test with ``index<TAB>sentence``."""
    return _glue(d, None, lambda i: ["gj04", i % 2, "" if i % 2 else "*", f"The sailors rode the breeze {i}."],
                 ["index", "sentence"], lambda i: [i, f"Bill whistled past the house {i}."])


def write_sst2(d: Path) -> Path:
    return _glue(d, ["sentence", "label"], lambda i: [f"a {'gorgeous' if i % 2 else 'dull'} film {i} ", i % 2],
                 ["index", "sentence"], lambda i: [i, f"a film {i}"])


def write_mrpc(d: Path) -> Path:
    return _glue(d, ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                 lambda i: [i % 2, 2 * i, 2 * i + 1, f'He said "yes" {i}.', "He agreed." if i % 2 else "Rain fell."],
                 ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                 lambda i: [i, 2 * i, 2 * i + 1, f"Sun shone {i}.", "It was sunny."])


def write_qqp(d: Path) -> Path:
    return _glue(d, ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                 lambda i: [i, 2 * i, 2 * i + 1, f"How old are you {i}?", "What is your age?", i % 2],
                 ["id", "question1", "question2"], lambda i: [i, f"Why {i}?", "Where?"])


STSB_HEAD = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]


def write_stsb(d: Path) -> Path:
    return _glue(d, STSB_HEAD + ["score"],
                 lambda i: [i, "main", "f", "2012", i, "none", "none", f"A man plays {i}.", "A man plays.",
                            f"{i % 5}.000"],
                 STSB_HEAD, lambda i: [i, "main", "f", "2012", i, "none", "none", f"A dog runs {i}.", "A dog."])


MNLI_HEAD = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
             "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
MNLI_LABELS = ["entailment", "neutral", "contradiction"]


def write_mnli(d: Path) -> Path:
    def row(i: int) -> list[Any]:
        lab = MNLI_LABELS[i % 3]
        return [i, i, f"{i}e", "letters", "( x )", "( y )", "(X)", "(Y)", f"Your gift {i} is appreciated.",
                "Thanks for the gift.", lab, lab]

    def test_row(i: int) -> list[Any]:
        return [i, i, f"{i}e", "letters", "( x )", "( y )", "(X)", "(Y)", f"Gift {i}.", "Thanks."]

    _glue(d, MNLI_HEAD + ["label1", "gold_label"], row, MNLI_HEAD, test_row, dev="dev_matched.tsv",
          test="test_matched.tsv")
    write_tsv(d / "dev_mismatched.tsv", MNLI_HEAD + ["label1", "gold_label"], [row(300 + i) for i in range(N_DEV)])
    write_tsv(d / "test_mismatched.tsv", MNLI_HEAD, [test_row(400 + i) for i in range(N_TEST)])
    return d


def write_qnli(d: Path) -> Path:
    return _glue(d, ["index", "question", "sentence", "label"],
                 lambda i: [i, f"Who is {i}?", "Him.", ["entailment", "not_entailment"][i % 2]],
                 ["index", "question", "sentence"], lambda i: [i, f"Who {i}?", "Her."])


def write_glue_rte(d: Path) -> Path:
    return _glue(d, ["index", "sentence1", "sentence2", "label"],
                 lambda i: [i, f"A b {i}.", "B.", ["entailment", "not_entailment"][i % 2]],
                 ["index", "sentence1", "sentence2"], lambda i: [i, f"C d {i}.", "D."])


def write_wnli(d: Path) -> Path:
    return _glue(d, ["index", "sentence1", "sentence2", "label"], lambda i: [i, f"I put it {i}.", "It fit.", i % 2],
                 ["index", "sentence1", "sentence2"], lambda i: [i, f"I took it {i}.", "It went."])


# ----------------------------------------------------------------------------- NER / SRL
def write_conll03(d: Path) -> Path:
    """The original 4-column files eng.train / eng.testa / eng.testb (IOB1)."""
    (d / "eng.train").write_text(CONLL03 * 2)
    (d / "eng.testa").write_text(CONLL03)
    (d / "eng.testb").write_text(CONLL03)
    return d


CONLL04_ROWS = [{"tokens": ["John", "Smith", "visited", "New", "York", "City"],
                 "tags": ["B-Peop", "L-Peop", "O", "B-Loc", "I-Loc", "L-Loc"], "relations": []},
                {"tokens": ["IBM", "hired", "Mary"], "tags": ["U-Org", "O", "U-Peop"], "relations": []}]


def write_conll04(d: Path) -> Path:
    """SpERT's JSON lists with BILOU tags: conll04_{train,dev,test}.json."""
    (d / "conll04_train.json").write_text(json.dumps(CONLL04_ROWS * 2))
    (d / "conll04_dev.json").write_text(json.dumps(CONLL04_ROWS))
    (d / "conll04_test.json").write_text(json.dumps(CONLL04_ROWS))
    return d


def write_ontonotes(d: Path) -> Path:
    """CoNLL-2012 ``*_gold_conll`` files, one per split."""
    (d / "train.english.v4_gold_conll").write_text(GOLD_CONLL * 2)
    (d / "development.english.v4_gold_conll").write_text(GOLD_CONLL)
    (d / "test.english.v4_gold_conll").write_text(GOLD_CONLL)
    return d


def write_conll05(d: Path) -> Path:
    """deep_srl lines ``<predicate index> tokens ||| tags``."""
    (d / "conll05.train.txt").write_text(SRL_TRAIN * 2)
    (d / "conll05.devel.txt").write_text(SRL_DEV + SRL_TRAIN)
    (d / "conll05.test.wsj.txt").write_text(SRL_DEV)
    return d


def write_conll12(d: Path) -> Path:
    """CoNLL-2012 ``*_gold_conll`` files (one example per predicate column)."""
    (d / "train.english.v4_gold_conll").write_text(GOLD_CONLL * 2)
    (d / "dev.english.v4_gold_conll").write_text(GOLD_CONLL)
    (d / "test.english.v4_gold_conll").write_text(GOLD_CONLL)
    return d


# ----------------------------------------------------------------------------- QA
def write_squad(d: Path) -> Path:
    (d / "train-v1.1.json").write_text(json.dumps(squad_json(QS * 2)))
    (d / "dev-v1.1.json").write_text(json.dumps(squad_json(QS)))
    return d


SQUAD2_QS = QS[:2] + [("q4", "Who painted the tower?", None, True)]


def write_squad_v2(d: Path) -> Path:
    (d / "train-v2.0.json").write_text(json.dumps(squad_json(SQUAD2_QS * 2, version_2=True)))
    (d / "dev-v2.0.json").write_text(json.dumps(squad_json(SQUAD2_QS, version_2=True)))
    return d


# ----------------------------------------------------------------------------- generic
def write_generic_cls(d: Path) -> Path:
    labels = ["pos", "neg", "neutral"]

    def row(i: int) -> dict[str, Any]:
        return {"text": f"review {i}", "text_pair": "ok", "label": labels[i % 3]}

    write_jsonl(d / "train.jsonl", [row(i) for i in range(N_TRAIN)])
    write_jsonl(d / "dev.jsonl", [row(100 + i) for i in range(N_DEV)])
    write_jsonl(d / "test.jsonl", [{"text": f"review {i}", "text_pair": "ok"} for i in range(N_TEST)])
    return d


def write_generic_reg(d: Path) -> Path:
    write_tsv(d / "train.tsv", ["text", "label"], [[f"score {i}", i * 0.5] for i in range(N_TRAIN)])
    write_tsv(d / "dev.tsv", ["text", "label"], [[f"score {i}", i * 0.5] for i in range(N_DEV)])
    write_tsv(d / "test.tsv", ["text"], [[f"score {i}"] for i in range(N_TEST)])
    return d


GENERIC_TAG = "Alice B-PER\nlikes O\nBob B-PER\n\nParis B-LOC\nis O\nnice O\n\n"


def write_generic_tag(d: Path) -> Path:
    (d / "train.txt").write_text(GENERIC_TAG * 2)
    (d / "dev.txt").write_text(GENERIC_TAG)
    (d / "test.txt").write_text(GENERIC_TAG)
    return d


def write_demo(d: Path) -> None:
    """Built in: no files, no --data_dir."""
    return None


WRITERS: dict[str, Callable[[Path], Path | None]] = {
    "demo": write_demo,
    "boolq": write_boolq, "cb": write_cb, "copa": write_copa, "multirc": write_multirc, "record": write_record,
    "rte": write_rte, "wic": write_wic, "wsc": write_wsc,
    "cola": write_cola, "sst2": write_sst2, "mrpc": write_mrpc, "qqp": write_qqp, "stsb": write_stsb,
    "mnli": write_mnli, "qnli": write_qnli, "glue_rte": write_glue_rte, "wnli": write_wnli,
    "conll03": write_conll03, "conll04": write_conll04, "ontonotes": write_ontonotes,
    "conll05": write_conll05, "conll12": write_conll12,
    "squad": write_squad, "squad_v2": write_squad_v2,
    "generic_cls": write_generic_cls, "generic_reg": write_generic_reg, "generic_tag": write_generic_tag,
}

# train.py flags that differ from TRAIN_DEFAULTS for a task
TRAIN_ARGS: dict[str, dict[str, str]] = {
    "squad": {"--max_seq_len": "128"},      # room for the question plus a context window with a useful stride
    "squad_v2": {"--max_seq_len": "128"},
}
TRAIN_DEFAULTS = {"--backbone": "tiny-bert", "--max_steps": "2", "--batch_size": "2", "--eval_every": "2",
                  "--prompt_len": "2", "--max_seq_len": "64"}
ROOT = Path(__file__).resolve().parents[2]
DS_CONFIG = ROOT / "ds_configs" / "zero3.json"


@pytest.fixture
def train_env(monkeypatch, tmp_path):
    """In-process training: CPU DeepSpeed, no hub access, a private feature cache.

    ``train.main`` configures process-wide logging and leaves it so (the ``megaprompt`` logger gets a stderr
    and a ``train.log`` file handler, its level and ``propagate`` are set; transformers is set to errors
    only): put it back afterwards, so later tests' ``caplog`` still sees task warnings and no handler keeps
    writing to a deleted tmp file.
    """
    pytest.importorskip("deepspeed")
    import transformers
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setenv("MEGAPROMPT_CACHE", str(tmp_path / "cache"))
    loggers = [logging.getLogger(n) for n in ("megaprompt", "DeepSpeed")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    tf_log = transformers.utils.logging
    tf_saved = (tf_log.get_verbosity(), tf_log.is_progress_bar_enabled())
    yield
    for lg, (handlers, level, propagate) in zip(loggers, saved):
        for h in lg.handlers:
            if h not in handlers:
                h.close()
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
    tf_log.set_verbosity(tf_saved[0])
    (tf_log.enable_progress_bar if tf_saved[1] else tf_log.disable_progress_bar)()


def train_tiny(task: str, tmp_path: Path, **flags: str) -> tuple[int, Path, Path | None]:
    """Write ``task``'s fixture under ``tmp_path/data`` and train in-process: (return code, output dir, data dir)."""
    from megaprompt.train import main
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    data_dir = WRITERS[task](folder)
    out = tmp_path / "run"
    args = {**TRAIN_DEFAULTS, **TRAIN_ARGS.get(task, {}), **flags, "--task": task, "--output_dir": str(out),
            "--ds_config": str(DS_CONFIG)}
    if data_dir is not None:
        args["--data_dir"] = str(data_dir)
    rc = main([x for kv in args.items() for x in kv])
    return rc, out, data_dir
