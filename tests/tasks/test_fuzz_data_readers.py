"""Property-based fuzz of the data readers (jsonl, TSV, CoNLL, SQuAD JSON): whatever bytes a data file holds,
reading and encoding it gives examples or the project's own one-line error (``UserError``), never another
exception. Three kinds of input per reader: arbitrary bytes, a valid file with bytes spliced in or cut out, and
(for the JSON readers) valid JSON whose fields hold values of any type."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megaprompt.errors import UserError
from megaprompt.tasks import get_task

from . import fixtures
from .test_qa import QS, squad_json

EXAMPLES = 150
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _squad(d: Path) -> Path:
    (d / "train-v1.1.json").write_text(json.dumps(squad_json(QS)))
    return d


# task, the fixture writer, the file the fuzzer rewrites, the split read from it
READERS: dict[str, tuple[str, Callable[[Path], Path], str, str]] = {
    "jsonl": ("rte", fixtures.write_rte, "train.jsonl", "train"),
    "tsv": ("sst2", fixtures.write_sst2, "train.tsv", "train"),
    "conll": ("conll03", fixtures.write_conll03, "eng.train", "train"),
    "squad": ("squad", _squad, "train-v1.1.json", "train"),
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8)


def _read_and_encode(kind: str, content: bytes, tokenizer) -> None:
    """Write ``content`` over the reader's file in a fresh valid fixture folder, then load + encode."""
    task_name, write, filename, split = READERS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        d = write(Path(tmp))
        (d / filename).write_bytes(content)
        task = get_task(task_name)
        try:
            examples = task.load(str(d), split)
            task.encode(examples, tokenizer, 32)
        except UserError as err:
            msg = str(err)
            assert msg and "\n" not in msg.strip(), f"not one line: {msg!r}"
            assert "Traceback" not in msg


def _valid_bytes(kind: str) -> bytes:
    task_name, write, filename, _ = READERS[kind]
    with tempfile.TemporaryDirectory() as tmp:
        return (write(Path(tmp)) / filename).read_bytes()


@pytest.mark.parametrize("kind", sorted(READERS))
def test_arbitrary_bytes(kind, tokenizer):
    @SETTINGS
    @given(content=st.binary(max_size=400))
    def run(content):
        _read_and_encode(kind, content, tokenizer)
    run()


@pytest.mark.parametrize("kind", sorted(READERS))
def test_valid_file_with_bytes_spliced_in_or_cut(kind, tokenizer):
    valid = _valid_bytes(kind)

    @SETTINGS
    @given(at=st.integers(0, len(valid)), cut=st.integers(0, 40), insert=st.binary(max_size=12)
           | st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x00", b"\t", b"\n", b"\r\n", b'"', b"null", b"NaN"]))
    def run(at, cut, insert):
        _read_and_encode(kind, valid[:at] + insert + valid[at + cut:], tokenizer)
    run()


@pytest.mark.parametrize("kind", ["jsonl", "squad"])
def test_json_fields_of_any_type(kind, tokenizer):
    valid = _valid_bytes(kind)

    def rows_of(text: str) -> list:
        return [json.loads(line) for line in text.splitlines() if line.strip()] if kind == "jsonl" else [json.loads(text)]

    rows = rows_of(valid.decode("utf-8"))

    @SETTINGS
    @given(data=st.data())
    def run(data):
        doc = json.loads(json.dumps(rows))
        # walk down to a random container in the first document and replace one of its values
        node = doc[0]
        for _ in range(data.draw(st.integers(0, 6))):
            if isinstance(node, dict) and node:
                child = node[data.draw(st.sampled_from(sorted(node)))]
            elif isinstance(node, list) and node:
                child = node[data.draw(st.integers(0, len(node) - 1))]
            else:
                break
            if not isinstance(child, (dict, list)) or not child:
                break
            node = child
        if isinstance(node, dict) and node:
            node[data.draw(st.sampled_from(sorted(node)))] = data.draw(json_values)
        elif isinstance(node, list) and node:
            node[data.draw(st.integers(0, len(node) - 1))] = data.draw(json_values)
        text = "".join(json.dumps(r) + "\n" for r in doc) if kind == "jsonl" else json.dumps(doc[0])
        _read_and_encode(kind, text.encode("utf-8"), tokenizer)
    run()


@pytest.mark.parametrize("kind", ["jsonl", "tsv", "conll"])
def test_a_leading_bom_is_read_like_the_plain_file(kind, tmp_path):
    task_name, write, filename, split = READERS[kind]
    d = write(tmp_path)
    plain = get_task(task_name).load(str(d), split)
    (d / filename).write_bytes(b"\xef\xbb\xbf" + (d / filename).read_bytes())
    assert get_task(task_name).load(str(d), split) == plain


@pytest.mark.parametrize("kind,edit,needle", [
    ("jsonl", lambda b: b.replace(b"\n", b"\n\xff", 1), ":2: not valid UTF-8 (byte 0xff)"),
    ("conll", lambda b: b.replace(b"\n", b"\n\xc3\x28", 2), ":2: not valid UTF-8"),
    ("jsonl", lambda b: b.replace(b'"label": "entailment"', b'"label": NaN', 1), ":2: NaN is not a JSON value"),
    ("squad", lambda b: b.replace(b'"answer_start": ', b'"answer_start": -', 1), "is not at character"),
    ("squad", lambda b: b.replace(b'"question": "Where', b'"question": null, "x": "Where', 1), "missing 'question'"),
])
def test_bad_bytes_name_the_file_and_line(kind, edit, needle, tmp_path):
    task_name, write, filename, split = READERS[kind]
    d = write(tmp_path)
    (d / filename).write_bytes(edit((d / filename).read_bytes()))
    with pytest.raises(UserError) as err:
        get_task(task_name).load(str(d), split)
    assert str(d / filename) in str(err.value) and needle in str(err.value)
