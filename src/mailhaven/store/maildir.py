"""Durable Maildir primitives: unique names, flags in file names, tmp -> fsync -> rename/link.

Owns: the file-name grammar (`<secs>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>[:2,<flags>]`,
cr.yp.to/proto/maildir.html plus the Dovecot S=/W= fields), the flag letters, CRLF normalisation
(and whether a message ends with a line break),
durable writes (write tmp/, fsync the file, rename or hard-link into place, fsync every directory
touched, undo everything on failure), folder creation and stale tmp/ file detection.
Does not own: UIDs and the index (index.py, uidlist.py), locking and events (mailbox.py).

Every function here is blocking; callers run them through asyncio.to_thread.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mailhaven.errors import StoreError, store_failure

INFO_SEP = ":2,"
# Maildir info letters (cr.yp.to/proto/maildir.html) <-> IMAP system flags (RFC 3501 §2.3.2).
FLAG_TO_LETTER = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}
LETTER_TO_FLAG = {v: k for k, v in FLAG_TO_LETTER.items()}
_CANONICAL_FLAG = {k.lower(): k for k in FLAG_TO_LETTER}
STALE_TMP_SECONDS = 36 * 3600  # Dovecot and the Maildir spec: tmp/ files older than 36 h are junk

_counter = itertools.count(1)
_NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^,:/]+)")


def canonical_flag(flag: str) -> str | None:
    """"\\seen" -> "\\Seen"; None for something that is not one of the five stored system flags."""
    return _CANONICAL_FLAG.get(flag.lower())


def to_crlf(data: bytes) -> bytes:
    """Every bare LF becomes CRLF; existing CRLF pairs are kept (RFC 5322 §2.3 line endings).

    Large inputs are converted in slices (never ending in CR, so no CRLF pair is split), so a worker
    thread doing this gives the GIL back to the event loop between slices (bytes methods hold it
    for their whole run).
    """
    if len(data) <= _CHUNK:
        return _to_crlf(data)
    out = []
    start, size = 0, len(data)
    while start < size:
        end = min(start + _CHUNK, size)
        while end < size and data[end - 1] == 0x0D:
            end += 1
        out.append(_to_crlf(data[start:end]))
        start = end
    return b"".join(out)


_CHUNK = 1 << 20


def _to_crlf(data: bytes) -> bytes:
    if b"\r" not in data:  # LF only (as Postfix and Dovecot deliver): one pass
        return data.replace(b"\n", b"\r\n")
    n = data.count(b"\n")
    if n == 0 or n == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def crlf_size(data: bytes) -> int:
    """Size of `data` once bare LFs are CRLF, without building the copy."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def unterminated(data: bytes) -> bool:
    """Whether a message does not end with a line break (not empty, last octet not LF). Sent as
    lines (POP3 RETR, RFC 1939 §3) it gets a final CRLF that its size does not count."""
    return bool(data) and data[-1] != 0x0A


def file_unterminated(path: str) -> bool | None:
    """`unterminated` of a message file, from its last octet only; None if the file is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        return size > 0 and os.pread(fd, 1, size - 1) != b"\n"
    finally:
        os.close(fd)


def sanitize_host(host: str) -> str:
    """The host part of a unique name: "/" ":" and "," escaped as octal (Maildir spec, Dovecot)."""
    host = host or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def unique_base(host: str) -> str:
    """`<secs>.M<usec>P<pid>Q<n>.<host>`: unique per host, process and call."""
    now = time.time()
    secs = int(now)
    usec = int((now - secs) * 1_000_000)
    return f"{secs}.M{usec}P{os.getpid()}Q{next(_counter)}.{sanitize_host(host)}"


def make_key(base: str, size: int, vsize: int) -> str:
    return f"{base},S={size},W={vsize}"


def split_name(fname: str) -> tuple[str, str]:
    """File name -> (key, suffix). The key is the part before ":" (the stable identity).

    "123.M1P2Q3.h,S=5:2,RS" -> ("123.M1P2Q3.h,S=5", ":2,RS"); a name without ":" has suffix "".
    """
    i = fname.find(":")
    if i < 0:
        return fname, ""
    return fname[:i], fname[i:]


def suffix_info(suffix: str) -> str:
    """The flag letters of a suffix (":2,RS" -> "RS"); "" when there is no ":2," info."""
    return suffix[3:] if suffix.startswith(INFO_SEP) else ""


def key_sizes(key: str) -> tuple[int | None, int | None]:
    """(S=, W=) from a key, None where absent."""
    s = w = None
    for field in key.split(",")[1:]:
        if field.startswith("S=") and field[2:].isdigit():
            s = int(field[2:])
        elif field.startswith("W=") and field[2:].isdigit():
            w = int(field[2:])
    return s, w


def info_flags(info: str) -> frozenset[str]:
    """Flag letters -> IMAP system flags (unknown letters ignored here, kept on disk)."""
    return frozenset(LETTER_TO_FLAG[c] for c in info if c in LETTER_TO_FLAG)


def build_info(system_flags: Iterable[str], old_info: str = "") -> str:
    """New flag letters: the system flags plus any other letters of `old_info` (e.g. "P", or
    Dovecot keyword letters a-z), ASCII-sorted as the Maildir spec requires."""
    letters = {FLAG_TO_LETTER[f] for f in system_flags if f in FLAG_TO_LETTER}
    letters.update(c for c in old_info if c not in LETTER_TO_FLAG)
    return "".join(sorted(letters))


def parse_base(fname: str) -> tuple[int, int, str] | None:
    """(secs, pid, host) of one of our unique names, else None."""
    m = _NAME_RE.match(fname)
    if not m:
        return None
    return int(m.group(1)), int(m.group(3)), m.group(5)


# --- durable file operations ---------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Batch:
    """Deliveries waiting for one fsync of a directory (their entries were made before it starts)."""

    __slots__ = ("cond", "done", "error", "lead")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)  # its members sleep here, nobody else's
        self.done = False
        self.error: OSError | None = None
        self.lead = False  # one member is asked to run the fsync for the batch


class _DirState:
    __slots__ = ("open", "running")

    def __init__(self) -> None:
        self.open: _Batch | None = None  # collecting members; its fsync has not started
        self.running = False  # an fsync of this directory is in progress (or handed over)


class DirSync:
    """Group commit of directory fsyncs, for worker threads delivering into the same new/.

    `sync(path)` returns once an fsync of `path` that STARTED after the call began has succeeded,
    so the caller's rename/link into `path`, made before the call, is durable. While one fsync of
    a directory runs, later callers join one batch; when it ends, one of them is woken to run a
    single fsync for the whole batch (the others sleep until it is done). One delivery alone
    costs exactly one fsync, as before; N concurrent ones into a busy new/ cost about two. An
    fsync error fails every member of its batch (each one then undoes its delivery): the error is
    never retried away, as fsync errors are not sticky.
    """

    def __init__(self, fsync: Callable[[Path], None] | None = None) -> None:
        self._fsync = fsync or fsync_dir
        self._lock = threading.Lock()
        self._dirs: dict[Path, _DirState] = {}
        self.fsyncs = 0  # fsync calls made (for tests and benchmarks)
        self.requests = 0  # sync() calls

    def sync(self, path: Path) -> None:
        with self._lock:
            self.requests += 1
            st = self._dirs.get(path)
            if st is None:
                st = self._dirs[path] = _DirState()
            if st.running:
                batch = st.open
                if batch is None:
                    batch = st.open = _Batch(self._lock)
                while not (batch.done or batch.lead):
                    batch.cond.wait()
                if batch.done:
                    return self._result(batch)
                batch.lead = False  # handed over: st.open was closed and st.running kept for us
            else:
                batch = _Batch(self._lock)
                st.running = True
            self.fsyncs += 1
        error: OSError | None = OSError(errno.EIO, "directory fsync did not finish", str(path))
        try:
            self._fsync(path)
            error = None
        except OSError as e:
            error = e
        finally:  # also on any other exception: then the batch fails with EIO
            with self._lock:
                batch.done, batch.error = True, error
                batch.cond.notify_all()
                nxt = st.open
                if nxt is not None:  # callers arrived meanwhile: wake one of them to lead
                    st.open, nxt.lead = None, True
                    nxt.cond.notify()
                else:
                    st.running = False
                    if self._dirs.get(path) is st:
                        del self._dirs[path]
        self._result(batch)

    @staticmethod
    def _result(batch: _Batch) -> None:
        if batch.error is not None:
            raise batch.error


def write_new_file(path: Path, data: bytes, *, fsync: bool, mtime: float | None = None, head: bytes = b"") -> None:
    """Create `path` exclusively, write `head` then all of `data`, fsync it. Removes the file on failure."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        for part in (head, data):
            view = memoryview(part)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        if mtime is not None:
            os.utime(fd, (mtime, mtime))
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(path)
        raise
    os.close(fd)


def atomic_write(path: Path, data: bytes, *, fsync: bool) -> None:
    """Replace `path` atomically: write a sibling temporary file, fsync, rename, fsync the dir."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_counter)}.tmp")
    write_new_file(tmp, data, fsync=fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass


def make_dirs(path: Path, *, fsync: bool) -> bool:
    """mkdir -p, fsyncing the parent of every directory created so the new entries are durable
    (a message acknowledged in a brand-new folder must not vanish with its folder on power loss).
    Returns True if anything was created. Raises NotADirectoryError if a file is in the way."""
    missing: list[Path] = []
    p = path
    while True:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(p))
            break
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not d.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(d)) from None
            continue
        if fsync:
            fsync_dir(d.parent)
    return bool(missing)


def ensure_folder(folder: Path, *, subfolder: bool, fsync: bool = False) -> bool:
    """Create cur/ new/ tmp/ (and the `maildirfolder` marker for Maildir++ subfolders).

    Returns True if anything was created. Raises OSError (e.g. NotADirectoryError when a file sits
    where a directory must be)."""
    created = False
    for sub in ("cur", "new", "tmp"):
        created |= make_dirs(folder / sub, fsync=fsync)
    if subfolder:
        marker = folder / "maildirfolder"
        if not marker.exists():
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            created = True
    return created


def delivered_path(folder: Path, name: str, info: str = "") -> Path:
    """Where deliver_files puts message `name` in `folder`: new/<name>, or cur/<name>:2,<info>
    when it is delivered with flags (a message in new/ has none, cr.yp.to/proto/maildir.html)."""
    return folder / "cur" / (name + INFO_SEP + info) if info else folder / "new" / name


def deliver_files(folders: Sequence[Path], base: str, data: bytes, *, fsync: bool,
                  dir_sync: DirSync | None = None, head: bytes = b"", infos: Sequence[str] = ()) -> str:
    """Durably place one message (`head` then `data`, without joining them in memory) into `new/`
    of every folder (into `cur/` with flag letters `infos[i]` for a folder given some, e.g. by
    Sieve's imap4flags, RFC 5232); return its file name (without the flags).

    One file is written to the first folder's tmp/ and fsynced, then renamed (one folder) or
    hard-linked (several; a per-folder copy if linking is impossible, e.g. across file systems)
    into each new/, then each new/ directory is fsynced (through `dir_sync`, shared with
    concurrent deliveries, when given). tmp/ itself is never fsynced: its entry is gone or
    irrelevant once the name is in new/. On any failure every link made is removed and
    StoreError (StorageFull when the disk is full) is raised, so no partial message is ever visible.
    """
    if not folders:
        raise StoreError("no delivery target")
    size = len(head) + len(data)
    name = make_key(base, size, size)
    tmp = folders[0] / "tmp" / name
    placed: list[Path] = []
    try:
        write_new_file(tmp, data, fsync=fsync, head=head)
        targets = [delivered_path(f, name, infos[i] if i < len(infos) else "") for i, f in enumerate(folders)]
        if len(folders) == 1:
            target = targets[0]
            os.rename(tmp, target)
            placed.append(target)
        else:
            for folder, target in zip(folders, targets, strict=True):
                try:
                    os.link(tmp, target)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                        raise
                    _copy_into(folder, name, data, fsync=fsync, head=head, target=target)
                placed.append(target)
            _unlink_quiet(tmp)
        if fsync:
            for d in dict.fromkeys(p.parent for p in placed):
                if dir_sync is not None:
                    dir_sync.sync(d)
                else:
                    fsync_dir(d)
    except Exception as e:
        for p in placed:
            _unlink_quiet(p)
        _unlink_quiet(tmp)
        raise store_failure(e, "the message could not be stored") from e
    return name


def _copy_into(folder: Path, name: str, data: bytes, *, fsync: bool, head: bytes = b"",
               target: Path | None = None) -> None:
    tmp = folder / "tmp" / name
    write_new_file(tmp, data, fsync=fsync, head=head)
    try:
        os.rename(tmp, target or folder / "new" / name)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def store_files(folder: Path, host: str, items: Sequence[tuple[bytes, str, float | None]], *,
                fsync: bool) -> list[str]:
    """Durably place messages (data, flag letters, mtime) into cur/ together (IMAP APPEND and
    MULTIAPPEND, RFC 3502): every one written and fsynced in tmp/ first, then all renamed into cur/
    and the directory fsynced once. On any failure none of them is left behind. Returns the names."""
    staged: list[tuple[Path, Path, str]] = []
    placed: list[Path] = []
    try:
        for data, info, mtime in items:
            key = make_key(unique_base(host), len(data), len(data))
            tmp = folder / "tmp" / key
            staged.append((tmp, folder / "cur" / (key + INFO_SEP + info), key + INFO_SEP + info))
            write_new_file(tmp, data, fsync=fsync, mtime=mtime)
        for tmp, target, _ in staged:
            os.rename(tmp, target)
            placed.append(target)
        if fsync and placed:
            fsync_dir(folder / "cur")
    except BaseException as e:
        for tmp, _, _ in staged:
            _unlink_quiet(tmp)
        for target in placed:
            _unlink_quiet(target)
        if isinstance(e, Exception):
            raise store_failure(e, "the messages could not be stored") from e
        raise
    return [name for _, _, name in staged]


def link_or_copy(src: Path, dst: Path, *, fsync: bool) -> None:
    """Hard-link `src` to `dst` (same content, same mtime); copy durably when linking fails."""
    try:
        os.link(src, dst)
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
            raise
    data = src.read_bytes()
    st = os.stat(src)
    tmp = dst.parent.parent / "tmp" / dst.name.split(":", 1)[0]
    write_new_file(tmp, data, fsync=fsync, mtime=st.st_mtime)
    try:
        os.rename(tmp, dst)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_tmp(tmp_dir: Path, host: str, now: float) -> int:
    """Remove stale files in one tmp/: ours (this host) whose writer process is gone, and anything
    older than 36 hours. Returns how many were removed."""
    removed = 0
    me = sanitize_host(host)
    try:
        entries = list(os.scandir(tmp_dir))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            parsed = parse_base(entry.name)
            stale = False
            if parsed is not None and parsed[2] == me and parsed[1] != os.getpid():
                stale = not pid_alive(parsed[1])
            if not stale:
                st = entry.stat(follow_symlinks=False)
                stale = now - max(st.st_mtime, st.st_ctime) > STALE_TMP_SECONDS
            if stale:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
