"""scratchllm.io.read_text: the one way user text files are read, and its one-line errors."""

from __future__ import annotations

import pytest

from scratchllm.data.classification import read_labelled_file
from scratchllm.data.instruction import load_instruction_records
from scratchllm.data.seq2seq import read_parallel_tsv
from scratchllm.errors import ScratchLLMError
from scratchllm.io import read_json, read_text


def test_read_text_ok_and_bom(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffhé\n".encode())
    assert read_text(f) == "hé\n"  # the BOM of spreadsheet exports is dropped


def test_read_text_errors(tmp_path):
    with pytest.raises(ScratchLLMError, match=r"^training text not found: .*nope\.txt$"):
        read_text(tmp_path / "nope.txt", "training text")
    with pytest.raises(ScratchLLMError, match="is a directory; give a file"):
        read_text(tmp_path, "training text")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"abc caf\xe9 x")
    with pytest.raises(ScratchLLMError, match=r"data file .*latin1\.txt is not UTF-8 text \(.* at byte 7\)"):
        read_text(bad, "data file")
    with pytest.raises(ScratchLLMError, match="not valid JSON"):
        (tmp_path / "b.json").write_text("{")
        read_json(tmp_path / "b.json")


@pytest.mark.parametrize(
    "reader,name,what",
    [
        (load_instruction_records, "d.json", "instruction data file"),
        (read_parallel_tsv, "d.tsv", "parallel data file"),
        (read_labelled_file, "d.csv", "data file"),
    ],
)
def test_data_readers_share_the_errors(tmp_path, reader, name, what):
    with pytest.raises(ScratchLLMError, match=f"^{what} not found"):
        reader(tmp_path / name)
    (tmp_path / name).write_bytes(b"\xff\xfe")
    with pytest.raises(ScratchLLMError, match=f"^{what} .* is not UTF-8 text .* at byte 0"):
        reader(tmp_path / name)
