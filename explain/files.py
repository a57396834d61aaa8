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
  call its own output name, shortened (with a hash, so still unique) where it would pass the
  file system's limit on one name (:func:`name_max`); :func:`check_output_dir`,
  :func:`check_output_file` and :func:`check_outputs` refuse a bad output location, an output
  folder holding an input, or a name too long, before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from explain.errors import OptionError

NAME_MAX = 255  # bytes of one file name: the limit of ext4, XFS, btrfs, APFS, NTFS (UTF-16 units)
TEMP_PREFIX_BYTES = 64  # of the target's name in its temporary name (".NAME.XXXXXXXX.part")

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
    prefix = f".{clip_name(target.name, TEMP_PREFIX_BYTES)}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=target.parent)
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


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, in hex: what an audit stores per image, so that two runs
    over the same images are matched by content, whatever their paths."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (numpy numbers and arrays as plain
    numbers and lists, anything else unknown as its text); return the path. The one JSON
    writer of a map's record (:mod:`explain.outputs`)."""
    return write_text(path, json.dumps(data, indent=2, default=_jsonable))


def _jsonable(obj: object) -> object:
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    return tolist() if callable(tolist) else str(obj)


_CONTROL: dict[int, str] = {i: f"\\x{i:02x}" for i in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}
# bidirectional controls (U+202E shows "gpj.exe" as "exe.jpg") and the Unicode line breaks
_CONTROL.update({i: f"\\u{i:04x}" for i in [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F),
                                              *range(0x2066, 0x206A), 0x2028, 0x2029]})


def display(name: str | bytes | os.PathLike) -> str:
    """Any file name (or other user text) as printable text: undecodable bytes → U+FFFD,
    control characters (ESC, newline, tab, …) → ``\\xNN``, bidirectional controls (U+202E …)
    and line separators → ``\\uNNNN``, so that nothing reorders, breaks or colours the text
    around it. For terminals, logs and pages."""
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
    unambiguous), and so is text holding a NUL (never in a file name, but in a hostile manifest;
    a raw NUL breaks CSV readers)."""
    text = lossless(name)
    raw = os.fsencode(text)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = None
    if decoded is not None and not decoded.startswith("b:") and "\x00" not in decoded:
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
    """Check before any work that the file ``path`` can be written: its name fits the file
    system, it is not a folder, its folder exists (or can be created) and is writable, and it
    is none of ``inputs``. Raises
    :class:`~explain.errors.OptionError` with the reason."""
    p = Path(path)
    _check_name(p, {})
    if p.is_dir():
        raise OptionError(f"output {display(p)} is a folder; give a file name with -o")
    check_output_dir(p.parent)
    check_outputs([p], inputs)
    return p


def name_max(folder: str | os.PathLike) -> int:
    """The longest file name, in bytes, the file system of ``folder`` (or of its nearest
    existing parent) takes: ``os.pathconf``'s ``PC_NAME_MAX``, else :data:`NAME_MAX`."""
    p = os.path.abspath(folder)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    try:
        return int(os.pathconf(p, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no answer
        return NAME_MAX


def name_bytes(name: str) -> int:
    """The length of ``name`` on the file system, in bytes (``os.fsencode``)."""
    return len(os.fsencode(name))


def clip_name(name: str, limit: int) -> str:
    """The longest start of ``name`` whose bytes fit ``limit``, cut between characters."""
    if name_bytes(name) <= limit:
        return name
    kept, used = [], 0
    for ch in name:
        used += name_bytes(ch)
        if used > limit:
            break
        kept.append(ch)
    return "".join(kept)


def short_name(name: str, limit: int) -> str:
    """``name`` when its bytes fit ``limit``; else its start and ``~`` and 12 hex digits of the
    SHA-256 of its bytes, in ``limit`` bytes: as unique as the name, and stable."""
    if name_bytes(name) <= limit:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return f"{clip_name(name, limit - len(digest) - 1)}~{digest}"


def _identity(path: str | os.PathLike) -> tuple:
    """What makes two paths one file: (device, inode) when it exists, else the absolute path."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.abspath(path))
    return ("inode", st.st_dev, st.st_ino)


def _check_name(path: Path, limits: dict[str, int]) -> None:
    """Refuse an output whose name is longer than its file system takes."""
    folder = os.path.dirname(os.path.abspath(path))
    if folder not in limits:
        limits[folder] = name_max(folder)
    if name_bytes(path.name) > limits[folder]:
        raise OptionError(f"output name {display(path.name)} is {name_bytes(path.name)} bytes, "
                          f"over the {limits[folder]} bytes this file system takes for one name; "
                          f"choose a shorter output name")


def check_outputs(outputs: Iterable[str | os.PathLike],
                  inputs: Iterable[str | os.PathLike] = (), *,
                  folders: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output that would replace one of ``inputs``, that two
    outputs share one path, or whose name is longer than its file system takes (:func:`name_max`).

    ``folders`` are output folders the call fills with files of its own naming (a grid's tiles):
    each must not be a file, and must hold none of ``inputs`` at any depth (its files would be
    written over them). Raises :class:`~explain.errors.OptionError` naming the file.
    """
    inputs = list(inputs)
    taken = {_identity(p): p for p in inputs}
    written: dict[str, Path] = {}
    limits: dict[str, int] = {}
    for out in map(Path, outputs):
        key = os.path.abspath(out)
        if key in written:
            raise OptionError(f"two outputs would be written to {display(out)}; choose another "
                              f"output name")
        written[key] = out
        _check_name(out, limits)
        if _identity(out) in taken:
            raise OptionError(f"output {display(out)} would replace the input "
                              f"{display(taken[_identity(out)])}; write the outputs elsewhere "
                              f"with -o")
    for folder in map(Path, folders):
        _check_name(folder, limits)
        if folder.exists() and not folder.is_dir():
            raise OptionError(f"output folder {display(folder)} is a file; move it away or "
                              f"choose another output name")
        inside = _input_inside(folder, inputs)
        if inside is not None:
            raise OptionError(f"output folder {display(folder)} holds the input "
                              f"{display(inside)}, which its files would replace; write the "
                              f"outputs elsewhere with -o")


def _input_inside(folder: Path, inputs: Sequence[str | os.PathLike]) -> str | os.PathLike | None:
    """The first of ``inputs`` whose entry lies in ``folder`` at any depth (compared by the
    folders' identity: links and case-insensitive names included), or None."""
    if not folder.is_dir():
        return None
    target = _identity(folder)
    seen: dict[str, bool] = {}
    for path in inputs:
        parent = os.path.dirname(os.path.abspath(path))
        trail = []
        while parent not in seen:
            trail.append(parent)
            if _identity(parent) == target:
                seen[parent] = True
                break
            up = os.path.dirname(parent)
            if up == parent:
                seen[parent] = False
                break
            parent = up
        hit = seen[parent]
        seen.update((p, hit) for p in trail)
        if hit:
            return path
    return None


def output_names(paths: Sequence[str | os.PathLike], *, room: int | Sequence[int] = 0,
                 limit: int = NAME_MAX) -> list[str]:
    """One distinct output NAME per input path (outputs are ``NAME.METHOD.png`` and the like);
    the same list always gets the same names.

    The rule, step by step for the inputs whose name is still shared (compared ignoring case,
    for case-insensitive file systems):

    1. the file's stem: ``photo`` for ``photo.jpg``;
    2. the file name with its suffix: ``photo.jpg``, ``photo.png``;
    3. its path below the folder common to those inputs, each separator written ``__``:
       ``nsfw__photo.jpg``, ``sfw__photo.jpg``;
    4. ``~2``, ``~3``, … in input order (the same file given twice).

    A name whose bytes plus ``room`` (the longest ``.METHOD…`` ending the caller adds; one
    number, or one per path) pass ``limit`` (the file system's, :func:`name_max`) is shortened
    by :func:`short_name` (its start, ``~`` and a hash). Names keep the file's bytes
    (undecodable ones included), so they are lossless. OptionError when ``room`` leaves no
    space for a shortened name.
    """
    rooms = [room] * len(paths) if isinstance(room, int) else list(room)
    if rooms and limit - max(rooms) < 16:
        raise OptionError(f"output names ending in {max(rooms)} bytes do not fit the {limit} "
                          "bytes this file system takes for one name")
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
    for name, extra in zip(names, rooms, strict=True):
        candidate, n = short_name(name, limit - extra), 1
        while candidate.casefold() in seen:
            n += 1
            candidate = short_name(f"{name}~{n}", limit - extra)
        seen.add(candidate.casefold())
        unique.append(candidate)
    return unique
