"""Writing output files safely, and showing any file name safely.

The one home for three promises the whole toolkit makes:

- **Atomic outputs.** Every file the library or the CLI writes goes through :func:`atomic_write`
  (or :func:`write_bytes` / :func:`write_text`): it is written under a temporary name in the
  same folder and renamed over the target only when complete, so a crash, a kill or a full disk
  never leaves a truncated or empty output, and an earlier good file is kept until the new one is
  whole.
- **Any byte name.** File names on POSIX are bytes; Python keeps undecodable bytes as lone
  surrogates (``os.fsdecode``). :func:`display` turns any name into text safe for a terminal, a
  log line or a web page (undecodable bytes become U+FFFD, control characters are escaped, so no
  ESC byte reaches a terminal); :func:`lossless` gives a text form that round-trips to the exact
  bytes (for storing in a database or a CSV).
- **No output over an input or another output.** :func:`output_names` gives each input of a
  call its own output name; :func:`check_output_dir`, :func:`check_output_file` and
  :func:`check_outputs` refuse a bad output location before any work starts.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from explain.errors import OptionError

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: outputs get the usual 0o666 & ~umask, not mkstemp's 0o600


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. The folder is
    created when missing. ``mode`` is ``"wb"`` or ``"w"`` (text; ``encoding`` defaults to UTF-8).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:64]}.", suffix=".part", dir=target.parent)
    try:
        if mode == "w":
            f: IO = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


_CONTROL = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def display(name: str | bytes | os.PathLike) -> str:
    """Any file name (or other user text) as printable text: undecodable bytes → U+FFFD,
    control characters (ESC, newline, tab, …) → ``\\xNN``. For terminals, logs and pages."""
    if isinstance(name, bytes):
        text = name.decode("utf-8", errors="replace")
    else:
        text = os.fspath(name)
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        text = text.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    return text.translate(_CONTROL)


def lossless(name: str | os.PathLike) -> str:
    """A path as text that round-trips to the exact file-system bytes (``os.fsdecode`` form,
    undecodable bytes as lone surrogates) — valid for Python, not for strict UTF-8 encoders:
    encode it with ``errors="surrogateescape"`` or use :func:`to_storable`."""
    return os.fsdecode(os.fspath(name))


def to_storable(name: str | os.PathLike) -> str:
    """A path as strict-UTF-8 text that :func:`from_storable` turns back into the same bytes.

    Decodable names are unchanged; a name with undecodable bytes is written as ``\\x``-escaped
    text behind a ``b:`` prefix (names that start with ``b:`` are escaped too, so the form is
    unambiguous)."""
    text = lossless(name)
    raw = os.fsencode(text)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and not decoded.startswith("b:"):
        return decoded
    return "b:" + "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}"
                          for b in raw)


def from_storable(text: str) -> str:
    """The inverse of :func:`to_storable`: the path in ``os.fsdecode`` form."""
    if not text.startswith("b:"):
        return text
    body = text[2:]
    out = bytearray()
    i = 0
    while i < len(body):
        if body[i] == "\\" and body[i + 1:i + 2] == "x":
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(ord(body[i]))
            i += 1
    return os.fsdecode(bytes(out))


def check_output_dir(folder: str | os.PathLike, option: str = "-o") -> Path:
    """Check before any work that ``folder`` can hold outputs: it exists as a folder (or can be
    created) and is writable. Raises :class:`~explain.errors.OptionError` with the reason, naming
    ``option`` (the command's option that gave the folder)."""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise OptionError(f"output {display(p)} is a file, not a folder; give a folder with "
                          f"{option}")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".explain-write-check.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OptionError(f"cannot write to output folder {display(p)}: "
                          f"{exc.strerror or exc}") from None
    return p


def check_output_file(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()
                      ) -> Path:
    """Check before any work that the file ``path`` can be written: it is not a folder, its
    folder exists (or can be created) and is writable, and it is none of ``inputs``. Raises
    :class:`~explain.errors.OptionError` with the reason."""
    p = Path(path)
    if p.is_dir():
        raise OptionError(f"output {display(p)} is a folder; give a file name with -o")
    check_output_dir(p.parent)
    check_outputs([p], inputs)
    return p


def _identity(path: str | os.PathLike) -> tuple:
    """What makes two paths one file: (device, inode) when it exists, else the absolute path."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.abspath(path))
    return ("inode", st.st_dev, st.st_ino)


def check_outputs(outputs: Iterable[str | os.PathLike],
                  inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output that would replace one of ``inputs`` or that two
    outputs share one path. Raises :class:`~explain.errors.OptionError` naming the file."""
    taken = {_identity(p): p for p in inputs}
    written: dict[str, Path] = {}
    for out in map(Path, outputs):
        key = os.path.abspath(out)
        if key in written:
            raise OptionError(f"two outputs would be written to {display(out)}; choose another "
                              f"output name")
        written[key] = out
        if _identity(out) in taken:
            raise OptionError(f"output {display(out)} would replace the input "
                              f"{display(taken[_identity(out)])}; write the outputs elsewhere "
                              f"with -o")


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One distinct output NAME per input path (outputs are ``NAME.METHOD.png`` and the like);
    the same list always gets the same names.

    The rule, step by step for the inputs whose name is still shared (compared ignoring case,
    for case-insensitive file systems):

    1. the file's stem: ``photo`` for ``photo.jpg``;
    2. the file name with its suffix: ``photo.jpg``, ``photo.png``;
    3. its path below the folder common to those inputs, each separator written ``__``:
       ``nsfw__photo.jpg``, ``sfw__photo.jpg``;
    4. ``~2``, ``~3``, … in input order (the same file given twice).

    Names keep the file's bytes (undecodable ones included), so they are lossless.
    """
    full = [os.path.abspath(os.fsdecode(os.fspath(p))) for p in paths]
    names = [Path(p).stem for p in full]

    def shared() -> list[int]:
        count = Counter(n.casefold() for n in names)
        return [i for i, n in enumerate(names) if count[n.casefold()] > 1]

    for i in shared():
        names[i] = Path(full[i]).name
    clash = shared()
    if clash:
        root = os.path.commonpath([os.path.dirname(full[i]) for i in clash])
        for i in clash:
            names[i] = os.path.relpath(full[i], root).replace(os.sep, "__")
    unique, seen = [], set()
    for name in names:
        candidate, n = name, 1
        while candidate.casefold() in seen:
            n += 1
            candidate = f"{name}~{n}"
        seen.add(candidate.casefold())
        unique.append(candidate)
    return unique
