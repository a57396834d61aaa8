"""explain.files: atomic writes, safe display and lossless storage of any byte file name."""

import os

import pytest

from explain.errors import OptionError
from explain.files import (
    atomic_write,
    check_output_dir,
    display,
    from_storable,
    to_storable,
    write_text,
)

NAMES = ["café.jpg", os.fsdecode(b"caf\xe9.jpg"), "b:x.jpg", "a\\b\x1b[31m.jpg",
         os.fsdecode(b"\\x\xff"), "plain.png"]


@pytest.mark.parametrize("name", NAMES)
def test_storable_round_trips_and_is_utf8(name):
    text = to_storable(name)
    text.encode("utf-8")  # strict: a database or CSV can hold it
    assert from_storable(text) == name
    assert os.fsencode(from_storable(text)) == os.fsencode(name)


def test_display_replaces_bad_bytes_and_escapes_controls():
    assert display(os.fsdecode(b"caf\xe9.jpg")) == "caf\ufffd.jpg"
    assert display(b"caf\xe9.jpg") == "caf\ufffd.jpg"
    assert display("a\x1b[31mb\nc") == "a\\x1b[31mb\\x0ac"
    assert display("café") == "café"


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    write_text(target, "good")
    with pytest.raises(RuntimeError), atomic_write(target, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_output_has_ordinary_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    out = write_text(tmp_path / "report.html", "x")
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deep").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="is a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OptionError, match="cannot write"):
        check_output_dir(tmp_path / "file" / "sub")  # a file where a folder must be
    with pytest.raises(OptionError, match="cannot write"):
        check_output_dir("/proc/explain-out")  # a mount nobody can write, root included
