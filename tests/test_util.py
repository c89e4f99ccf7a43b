"""harness.util: atomic writes, plain data, markdown tables (the helpers every layer imports)."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.util import (
    markdown_table,
    to_plain,
    write_atomically,
    write_bytes_atomically,
    write_text_atomically,
)

RESULTS = Path(__file__).resolve().parent.parent / "results"


def test_an_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "new" / "folder" / "file.txt"
    assert write_text_atomically(target, "first") == target
    write_bytes_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    def half_write(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(target, half_write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_to_plain_turns_mappings_and_sequences_into_dicts_and_lists_recursively():
    node = OmegaConf.create({"a": [1, (2, 3)], "b": {"c": "text"}})
    assert to_plain(node) == {"a": [1, [2, 3]], "b": {"c": "text"}}
    assert type(to_plain(node)) is dict
    assert type(to_plain(node)["a"]) is list
    assert to_plain(OrderedDict(x=(1,))) == {"x": [1]}
    assert to_plain("abc") == "abc"
    assert to_plain(b"abc") == b"abc"
    assert to_plain(1.5) == 1.5


def test_the_three_markdown_layouts():
    header, rows = ["name", "x"], [["adam", 1.5], ["a|b", 10]]
    assert markdown_table(header, rows, ["left", "right"]) == (
        "| name |   x |\n| ---- | --: |\n| adam | 1.5 |\n| a\\|b |  10 |"
    )
    assert markdown_table(header, rows, ["left", "right"], style="plain") == (
        "| name | x |\n| --- | ---: |\n| adam | 1.5 |\n| a\\|b | 10 |"
    )
    assert markdown_table(header, rows, style="compact") == (
        "| name | x |\n|---|---|\n| adam | 1.5 |\n| a\\|b | 10 |"
    )
    assert markdown_table(["c"], [["x"]], ["center"]).splitlines()[1] == "| :-: |"


@pytest.mark.parametrize(
    ("rows", "align", "style"),
    [([["only one"]], None, "padded"), ([["a", "b"]], ["left"], "padded"), ([], None, "wide")],
)
def test_a_malformed_markdown_table_is_refused(rows, align, style):
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], rows, align, style=style)


def test_the_committed_saturation_table_is_rewritten_byte_for_byte():
    import pandas as pd

    from harness.tuning.export import saturation_markdown

    folder = RESULTS / "paper" / "tuning"
    table = pd.read_csv(folder / "saturation.csv")
    assert saturation_markdown(table) == (folder / "saturation.md").read_text()


def test_an_atomic_write_gives_the_usual_mode_even_when_the_writer_replaces_the_file(tmp_path):
    """safetensors' save_file writes a file of its own with mode 0600 in place of the temporary
    one: the written file still gets ``0o666 & ~umask`` (a checkpoint others can read)."""
    import torch
    from safetensors.torch import save_file

    def replace_with_private_file(tmp: Path) -> None:
        tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"data")
        os.close(fd)

    umask = os.umask(0)
    os.umask(umask)
    private = write_atomically(tmp_path / "private.bin", replace_with_private_file)
    tensors = write_atomically(
        tmp_path / "lopt.safetensors", lambda tmp: save_file({"theta": torch.zeros(3)}, tmp)
    )
    for target in (private, tensors):
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask, target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lopt.safetensors", "private.bin"]
