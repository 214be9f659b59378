"""EKDF for safetensors files and model directories (what ``entropy-kernels compress |
decompress | inspect`` run).

- :func:`compress_path` turns a safetensors file, or every ``*.safetensors`` file of a directory
  (other files are copied), into the same names with the bf16 tensors of at least
  ``min_numel`` values EKDF-coded; the original safetensors metadata is kept.
- :func:`decompress_path` restores plain safetensors files, bit-identical tensor by tensor.
- :func:`inspect_path` lists each tensor's size, bits per value and the exponent entropy bound.

Outputs are all-or-nothing: everything is written into a hidden temporary file or folder beside
``dst`` (same filesystem) and renamed to ``dst`` only once every file is complete and synced. On
any failure, an interrupt included, the temporary output is removed and ``dst`` is as it was.
``dst`` must not exist unless ``overwrite=True``, must not be ``src`` (under any spelling, symlink
or hard link), and for directories must not lie inside ``src`` nor contain it: those raise
:class:`OutputPathError` before anything is read or written.

Example
-------
>>> import os, tempfile, torch
>>> from safetensors.torch import save_file, load_file
>>> d = tempfile.mkdtemp()
>>> w = (torch.randn(512, 512) * 0.02).to(torch.bfloat16)
>>> save_file({"w": w, "b": torch.zeros(4)}, os.path.join(d, "m.safetensors"))
>>> stats = compress_path(os.path.join(d, "m.safetensors"), os.path.join(d, "c.safetensors"), progress=False)
>>> stats["tensors_compressed"], stats["ratio"] < 0.7
(1, True)
>>> _ = decompress_path(os.path.join(d, "c.safetensors"), os.path.join(d, "r.safetensors"), progress=False)
>>> torch.equal(load_file(os.path.join(d, "r.safetensors"))["w"], w)
True
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import time
from typing import Dict, Iterator, List, Tuple

import torch

from .compressed_model import _progress
from .dfloat_format import DFloatError
from .dfloat_safetensors import load_file, read_metadata, save_file
from .dfloat_tensor import DFloatTensor


class OutputPathError(ValueError):
    """``dst`` cannot be written as asked: it is ``src``, lies inside ``src`` (or contains it),
    is of the other kind (file vs directory), or exists and ``overwrite`` is False.

    Example
    -------
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> f = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_file({"b": torch.zeros(4)}, f)
    >>> try:
    ...     compress_path(f, f, progress=False)
    ... except OutputPathError as exc:
    ...     print("refused:", str(exc).split(":")[0])
    refused: dst ... is the input ...
    """


# --- inputs -------------------------------------------------------------------------------------


def _input_files(src: str, what: str = "src") -> Tuple[bool, List[str], List[str]]:
    """``(is_dir, safetensors file names, other file names)`` of ``src``; a missing input or a
    folder without ``*.safetensors`` files is an error before any output is created."""
    if not os.path.exists(src):
        raise FileNotFoundError(errno.ENOENT, f"{what} does not exist", src)
    if os.path.isdir(src):
        names = sorted(os.listdir(src))
        shards = [n for n in names if n.endswith(".safetensors") and os.path.isfile(os.path.join(src, n))]
        others = [n for n in names if n not in shards and os.path.isfile(os.path.join(src, n))]
        if not shards:
            raise FileNotFoundError(errno.ENOENT, "no *.safetensors file in this folder", src)
        return True, shards, others
    if not os.path.isfile(src):
        raise ValueError(f"{what} {src!r} is neither a file nor a directory")
    return False, [os.path.basename(src)], []


def _load(path: str) -> Dict[str, object]:
    """load_file with the file's name in the error: the safetensors parser's messages do not
    name it, and in a sharded model the user needs to know which shard is damaged."""
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except SafetensorError as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    except DFloatError as exc:
        if str(exc).startswith(f"{path}:"):  # load_file already named the file
            raise
        raise DFloatError(f"{path}: {exc}") from exc


def _plain_metadata(path: str) -> Dict[str, str]:
    return {k: v for k, v in read_metadata(path).items() if k not in ("ekdf", "format")}


def _each(items: list, desc: str, progress: bool) -> Iterator:
    """Iterate with a progress bar that is closed (its line ended) even when the loop body
    raises, so an error message that follows starts on its own line."""
    bar = _progress(items, len(items), desc, progress)
    try:
        yield from bar
    finally:
        close = getattr(bar, "close", None)
        if close is not None:
            close()


# --- outputs ------------------------------------------------------------------------------------


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_output(src: str, dst: str, is_dir: bool, overwrite: bool) -> None:
    """Refuse outputs that would replace or be written into the input, or clobber data."""
    if not isinstance(dst, (str, os.PathLike)) or not os.fspath(dst):
        raise OutputPathError(f"dst must be a non-empty path, got {dst!r}")
    real_src, real_dst = os.path.realpath(src), os.path.realpath(dst)
    exists = os.path.lexists(dst)
    same = real_src == real_dst or (os.path.exists(dst) and os.path.samefile(src, dst))
    if same:
        raise OutputPathError(f"dst {dst!r} is the input {src!r}: write to another path")
    if is_dir and _inside(real_dst, real_src):
        raise OutputPathError(f"dst {dst!r} is inside the input folder {src!r}: write to another path")
    if _inside(real_src, real_dst):
        raise OutputPathError(f"dst {dst!r} contains the input {src!r}: write to another path")
    if exists:
        if os.path.isdir(dst) != is_dir:
            kind = "a directory" if os.path.isdir(dst) else "not a directory"
            raise OutputPathError(f"dst {dst!r} exists and is {kind}, but the input is "
                                  f"{'a directory' if is_dir else 'a file'}")
        if not overwrite:
            raise OutputPathError(f"dst {dst!r} already exists (pass overwrite=True / --overwrite to replace it)")


def _reserve(parent: str, base: str, tag: str, is_dir: bool) -> str:
    """Create and return a fresh hidden path beside the output; created with os.mkdir / O_EXCL
    so that it gets the usual permissions (umask) and never reuses someone else's file."""
    while True:
        path = _unused_name(parent, base, tag)
        try:
            if is_dir:
                os.mkdir(path)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _fsync(path: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # some platforms cannot open a directory: its entry is then as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.EROFS):  # filesystems without fsync
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _staged_output(dst: str, is_dir: bool, overwrite: bool) -> Iterator[str]:
    """Yield a temporary path beside ``dst`` to write into; rename it to ``dst`` when the block
    finishes. If the block (or the rename) fails, remove the temporary path and any parent
    folders made here, and leave ``dst`` as it was."""
    dst = os.path.abspath(dst)
    parent, base = os.path.split(dst)
    made: List[str] = []
    try:
        missing = parent
        while not os.path.exists(missing):
            made.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(parent, exist_ok=True)
        tmp = _reserve(parent, base, "partial", is_dir)
    except BaseException:
        _remove_made(made)
        raise
    try:
        yield tmp
        for root, _dirs, files in os.walk(tmp):
            for f in files:
                _fsync(os.path.join(root, f))
        _fsync(tmp)
        if not os.path.lexists(dst):
            os.rename(tmp, dst)  # a non-empty directory that appeared meanwhile makes this fail
        elif not is_dir:
            os.replace(tmp, dst)
        else:  # overwrite a directory: move the old one aside, put the new one, then delete the old
            old = _unused_name(parent, base, "old")
            os.rename(dst, old)
            try:
                os.rename(tmp, dst)
            except BaseException:
                os.rename(old, dst)
                raise
            _remove(old)
    except BaseException:
        _remove(tmp)
        _remove_made(made)
        raise
    with contextlib.suppress(OSError):  # the output is complete; a failed directory sync is not worth failing for
        _fsync(parent)


def _unused_name(parent: str, base: str, tag: str) -> str:
    while True:
        path = os.path.join(parent, f".{base}.ek-{tag}-{secrets.token_hex(4)}")
        if not os.path.lexists(path):
            return path


def _remove_made(made: List[str]) -> None:
    for d in made:  # deepest first
        try:
            os.rmdir(d)
        except OSError:
            break


def _file_mode(staged: str) -> int:
    """The permissions a new file gets here (0o666 less the umask), read off the staged path made
    with them: safetensors writes its files 0o600, which would make the output private."""
    return os.stat(staged).st_mode & 0o666


def _each_shard(src: str, staged: str, is_dir: bool, shards: List[str], others: List[str]) -> Iterator[tuple]:
    """The loop compress and decompress share: copy the other files into the staged output,
    then yield ``(shard, its source path, its staged path, its tensors)`` one shard at a time
    and give each written shard the output's permissions once the caller has written it."""
    mode = _file_mode(staged)
    for name in others:
        shutil.copy2(os.path.join(src, name), os.path.join(staged, name))
    for shard in shards:
        s, d = (os.path.join(src, shard), os.path.join(staged, shard)) if is_dir else (src, staged)
        yield shard, s, d, _load(s)
        os.chmod(d, mode)


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --- commands -----------------------------------------------------------------------------------


def compress_path(src: str, dst: str, min_numel: int = 65536, threads: int = 0, progress: bool = True,
                  overwrite: bool = False) -> dict:
    """Compress a safetensors file or a directory of them (see the module docstring).

    Returns totals: ``tensors``, ``tensors_compressed``, ``original_bytes`` / ``compressed_bytes``
    (all tensors), ``ratio``, ``bf16_bits_per_value`` and ``bound_bits_per_value`` (over the
    compressed tensors: achieved vs ``8 + H(exponent)``), ``seconds``. ``dst`` appears only when
    everything succeeded; an existing ``dst`` is replaced only with ``overwrite=True``.
    """
    _check_int(min_numel, "min_numel", 0)
    _check_int(threads, "threads", 0)
    is_dir, shards, others = _input_files(src)
    _check_output(src, dst, is_dir, overwrite)
    start = time.perf_counter()
    totals = {"tensors": 0, "tensors_compressed": 0, "original_bytes": 0, "compressed_bytes": 0}
    coded_values = coded_bytes = bound_bits = 0.0
    with _staged_output(dst, is_dir, overwrite) as tmp:
        for shard, s, d, tensors in _each_shard(src, tmp, is_dir, shards, others):
            out: Dict[str, object] = {}
            for name, t in _each(list(tensors.items()), shard, progress):
                totals["tensors"] += 1
                if isinstance(t, DFloatTensor):
                    raise ValueError(f"{s}: {name} is already EKDF-compressed")
                size = t.numel() * t.element_size()
                totals["original_bytes"] += size
                if t.dtype == torch.bfloat16 and t.numel() >= min_numel:
                    c = DFloatTensor.compress(t, threads=threads)
                    out[name] = c
                    totals["tensors_compressed"] += 1
                    totals["compressed_bytes"] += c.nbytes
                    coded_values += c.numel
                    coded_bytes += c.nbytes
                    bound_bits += c.entropy_bound_bits * c.numel
                else:
                    out[name] = t
                    totals["compressed_bytes"] += size
            save_file(out, d, metadata=_plain_metadata(s))
    totals["ratio"] = totals["compressed_bytes"] / max(1, totals["original_bytes"])
    totals["bf16_bits_per_value"] = 8 * coded_bytes / coded_values if coded_values else None
    totals["bound_bits_per_value"] = bound_bits / coded_values if coded_values else None
    totals["seconds"] = time.perf_counter() - start
    return totals


def decompress_path(src: str, dst: str, progress: bool = True, overwrite: bool = False) -> dict:
    """Restore plain safetensors file(s) from :func:`compress_path` output (bit-identical).

    Every payload is checked (CRC32 and structure) before it is decoded; ``dst`` appears only
    when every file decoded, and replaces an existing ``dst`` only with ``overwrite=True``.

    Example
    -------
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file, load_file
    >>> d = tempfile.mkdtemp()
    >>> w = torch.randn(300, 300).to(torch.bfloat16)
    >>> save_file({"w": w}, os.path.join(d, "m.safetensors"))
    >>> _ = compress_path(os.path.join(d, "m.safetensors"), os.path.join(d, "c.safetensors"), progress=False)
    >>> decompress_path(os.path.join(d, "c.safetensors"), os.path.join(d, "r.safetensors"), progress=False)["tensors"]
    1
    >>> torch.equal(load_file(os.path.join(d, "r.safetensors"))["w"], w)
    True
    """
    from safetensors.torch import save_file as _save

    is_dir, shards, others = _input_files(src)
    _check_output(src, dst, is_dir, overwrite)
    start = time.perf_counter()
    count = 0
    with _staged_output(dst, is_dir, overwrite) as tmp:
        for shard, s, d, tensors in _each_shard(src, tmp, is_dir, shards, others):
            plain = {}
            for name, t in _each(list(tensors.items()), shard, progress):
                plain[name] = t.decompress() if isinstance(t, DFloatTensor) else t
                count += 1
            _save({k: v.contiguous() for k, v in plain.items()}, d, metadata=_plain_metadata(s) or None)
    return {"tensors": count, "seconds": time.perf_counter() - start}


def inspect_path(path: str) -> List[dict]:
    """One row per tensor: ``name, file, shape, dtype, ekdf, bytes, bits_per_value, bound_bits``.

    A missing path or a folder without ``*.safetensors`` files raises ``FileNotFoundError``.

    Example
    -------
    >>> import os, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> d = tempfile.mkdtemp()
    >>> save_file({"b": torch.zeros(4)}, os.path.join(d, "m.safetensors"))
    >>> [(r["name"], r["dtype"], r["bits_per_value"]) for r in inspect_path(d)]
    [('b', 'float32', 32.0)]
    """
    is_dir, shards, _others = _input_files(path, "path")
    rows = []
    for shard in shards:
        f = os.path.join(path, shard) if is_dir else path
        for name, t in _load(f).items():
            if isinstance(t, DFloatTensor):
                rows.append({"name": name, "file": shard, "shape": list(t.shape), "dtype": "bfloat16",
                             "ekdf": True, "bytes": t.nbytes, "bits_per_value": t.bits_per_value,
                             "bound_bits": t.entropy_bound_bits})
            else:
                rows.append({"name": name, "file": shard, "shape": list(t.shape),
                             "dtype": str(t.dtype).replace("torch.", ""), "ekdf": False,
                             "bytes": t.numel() * t.element_size(), "bits_per_value": 8.0 * t.element_size(),
                             "bound_bits": None})
    return rows
