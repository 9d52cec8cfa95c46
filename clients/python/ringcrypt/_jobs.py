"""What every way of calling shares about a file job: the request line, the default output
names (as the ``ringcrypt`` CLI gives them), and a single file's input and output opened in
this process and passed to the daemon as descriptors, then linked into place
(docs/protocol.md, "Passing descriptors").
"""

import errno
import json
import os
import stat
from json.encoder import encode_basestring as _json_str
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from .errors import BadRequest, Exists, RingcryptError, from_os_error
from .types import FileResult, file_result

PathArg = Union[str, "os.PathLike[str]"]

OPS = ("encrypt", "decrypt", "rewrap")
SUFFIX = ".rcrypt"
_TEMP_PREFIX = ".ringcrypt-tmp-"

# Errors of open(O_TMPFILE) that mean the file system has no unnamed temp files (EISDIR on
# old kernels), as the CLI reads them.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL}
_TMPFILE_FLAGS = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC


def absolute(path: PathArg) -> str:
    """``path`` made absolute against our working directory, lexically, as the CLI does:
    ``.`` and repeated ``/`` go, ``..`` stays (the daemon refuses it with a clear message
    rather than guess what a symlinked directory before it means), nothing is resolved."""
    text = path if type(path) is str else os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text[:1] == "/" and "//" not in text and "/." not in text and text[-1] != "/":
        return text  # already in the form the slow way below gives
    if not text:
        raise ValueError("an empty path names no file")
    if not text.startswith("/"):
        text = os.getcwd() + "/" + text
    parts = [p for p in text.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def wire_name(path: str, *, by_path: bool) -> str:
    """The path as the request line carries it. A job by path needs the exact name in UTF-8;
    a job on descriptors sends names only for messages, so an undecodable byte becomes U+FFFD
    and a ``..`` is folded lexically."""
    try:
        path.encode("utf-8")
        clean = True
    except UnicodeEncodeError:
        clean = False
    if by_path:
        if not clean:
            raise BadRequest(
                f"{path!r} is not UTF-8, so it cannot be named to the daemon; pass it as a "
                "single file (by descriptor) or rename it",
                code="bad_request",
            )
        return path
    if not clean:
        path = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return os.path.normpath(path) if "/.." in path else path


def default_output(op: str, input: str, output: Optional[PathArg], in_place: bool) -> str:
    """The output path: the one given, or the CLI's default for ``op``."""
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}, not {op!r}")
    if in_place:
        if op != "rewrap":
            raise ValueError("in_place=True is for rewrap only")
        if output is not None:
            raise ValueError("rewrap takes an output or in_place=True, not both")
        return input
    if output is not None:
        return absolute(output)
    if op == "encrypt":
        return input + SUFFIX
    if op == "decrypt":
        if input.endswith(SUFFIX) and len(os.path.basename(input)) > len(SUFFIX):
            return input[: -len(SUFFIX)]
        raise ValueError(
            f"{input} does not end in {SUFFIX}, so its output name cannot be derived; "
            "pass output="
        )
    raise ValueError("rewrap needs an output, or in_place=True to replace the input")


class LineHead:
    """The request line of a file job (optional fields left out when they have their
    default), its fields but the id and the paths written out once:
    :meth:`line` adds those, escaped as ``json.dumps`` would (``map_files`` builds thousands
    of lines that differ only there)."""

    __slots__ = ("head", "tail")

    def __init__(self, op: str, fields: str) -> None:
        self.head = '{"op":' + _json_str(op) + ',"id":'
        self.tail = fields + "}\n"

    def line(self, req_id: Union[int, str], input: str, output: str) -> bytes:
        rid = str(req_id) if type(req_id) is int else json.dumps(req_id, ensure_ascii=False)
        return (
            self.head + rid + ',"input":' + _json_str(input) + ',"output":' + _json_str(output)
            + self.tail
        ).encode("utf-8")


def line_head(
    op: str,
    key: Optional[str] = None,
    overwrite: bool = False,
    recursive: bool = False,
    skip_existing: bool = False,
    fds: bool = False,
) -> LineHead:
    fields = ""
    if key is not None:
        fields += ',"key":' + _json_str(key)
    if overwrite:
        fields += ',"overwrite":true'
    if recursive:
        fields += ',"recursive":true'
    if skip_existing:
        fields += ',"skip_existing":true'
    if fds:
        fields += ',"fds":true'
    return LineHead(op, fields)


def simple_line(req_id: Union[int, str], op: str, **fields: Any) -> bytes:
    req: Dict[str, Any] = {"op": op, "id": req_id}
    req.update(fields)
    return (json.dumps(req) + "\n").encode("utf-8")


def output_dir(output: str) -> str:
    """The directory of an absolute ``output`` (as :func:`absolute` gives it)."""
    return output[: output.rindex("/")] or "/"


class PassedFiles:
    """A single file's input, opened for reading, and its output, an unnamed ``O_TMPFILE``
    in the output's directory: both opened with this process's own rights, so the daemon
    needs no allowed root for them. The daemon reads the one and fills the other;
    :meth:`commit` then links the output into place. Until then nothing exists under the
    output's name; :meth:`close` without a commit leaves nothing behind."""

    __slots__ = ("input_fd", "output_fd", "output", "dir", "mode", "times", "overwrite")

    def __init__(
        self,
        input: str,
        output: str,
        overwrite: bool,
        in_place: bool,
        precheck: bool = True,
        dir_fd: Optional[int] = None,
        umask: Optional[int] = None,
    ) -> None:
        """``precheck=False`` skips looking for an existing output before the job when
        ``overwrite`` is false: the link refuses it afterwards all the same (``Exists``).
        ``dir_fd``, the output's directory opened by the caller, saves looking it up again.
        ``umask``, the process's, when the caller knows it: an input mode it keeps intact is
        given to the temporary file as it is created, which saves a ``fchmod`` later."""
        self.output = output
        self.overwrite = overwrite
        self.dir = output_dir(output)
        self.output_fd = -1
        try:
            self.input_fd = os.open(input, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise from_os_error("open", input, err) from err
        try:
            st = os.fstat(self.input_fd)
            if stat.S_ISDIR(st.st_mode):
                raise BadRequest(
                    f"{input} is a directory; pass tree=True to work on a directory tree"
                )
            mode = st.st_mode & 0o777
            self.times = (st.st_atime_ns, st.st_mtime_ns)
            if precheck or overwrite:
                self._check_output(input, st, overwrite, in_place)
            if umask is not None and not mode & umask:
                self.mode = -1  # the file has it from the start
                create = mode
            else:
                self.mode = mode
                create = 0o600
            try:
                if dir_fd is None:
                    self.output_fd = os.open(self.dir, _TMPFILE_FLAGS, create)
                else:
                    self.output_fd = os.open(".", _TMPFILE_FLAGS, create, dir_fd=dir_fd)
            except OSError as err:
                if err.errno in _NO_TMPFILE:
                    raise NoTmpfile(self.dir) from err
                raise from_os_error("create a temporary file in", self.dir, err) from err
        except BaseException:
            self.close()
            raise

    def _check_output(
        self, input: str, st: os.stat_result, overwrite: bool, in_place: bool
    ) -> None:
        try:
            out = os.lstat(self.output)
        except FileNotFoundError:
            return
        except OSError as err:
            raise from_os_error("check", self.output, err) from err
        if (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino) and not in_place:
            raise BadRequest(
                f"{self.output} is the input itself; inputs are never modified, choose "
                "another output"
            )
        if not overwrite:
            raise Exists(f"{self.output} already exists; choose another output or pass overwrite=True")

    def fds(self) -> List[int]:
        return [self.input_fd, self.output_fd]

    def close_input(self) -> None:
        """The daemon holds its own copy once the request is sent."""
        if self.input_fd >= 0:
            os.close(self.input_fd)
            self.input_fd = -1

    def commit(self, fsync: bool, dir_fd: Optional[int] = None) -> None:
        """After ``done``: the input's mode and times, optionally an fsync of the file, the
        link into place (never over an existing name unless ``overwrite``), and an fsync of
        the directory. ``dir_fd``, the output's directory opened by the caller, saves
        opening it here."""
        fd = self.output_fd
        dfd = -1
        try:
            if self.mode >= 0:
                os.fchmod(fd, self.mode)
            os.utime(fd, ns=self.times)
            if fsync:
                os.fsync(fd)
            # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N links the unnamed file; os.link
            # calls linkat only when given a directory descriptor.
            if dir_fd is None:
                dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            at = dfd if dir_fd is None else dir_fd
            proc = f"/proc/self/fd/{fd}"
            name = self.output[self.output.rindex("/") + 1 :]
            if not self.overwrite:
                os.link(proc, name, dst_dir_fd=at)
            else:
                temp = _TEMP_PREFIX + os.urandom(8).hex()
                os.link(proc, temp, dst_dir_fd=at)
                try:
                    os.replace(temp, name, src_dir_fd=at, dst_dir_fd=at)
                except BaseException:
                    os.unlink(temp, dir_fd=at)
                    raise
            if fsync:
                os.fsync(at)
        except OSError as err:
            raise from_os_error("link into place", self.output, err) from err
        finally:
            if dfd >= 0:
                os.close(dfd)
            self.close()

    def close(self) -> None:
        self.close_input()
        if self.output_fd >= 0:
            os.close(self.output_fd)
            self.output_fd = -1


class NoTmpfile(RingcryptError):
    """The output's file system has no ``O_TMPFILE``: the job goes by path instead (and
    then needs an allowed root), as the CLI does."""

    code = "io_error"

    def __init__(self, directory: str) -> None:
        super().__init__(f"{directory} has no O_TMPFILE support")


def plan(
    op: str,
    input: PathArg,
    output: Optional[PathArg],
    overwrite: bool,
    in_place: bool,
    skip_existing: bool,
) -> "tuple[str, str]":
    """A file job's absolute input and output, or ValueError for arguments that do not fit
    together (before anything is opened or sent)."""
    if overwrite and skip_existing and not in_place:
        raise ValueError("overwrite and skip_existing exclude each other")
    src = absolute(input)
    return src, default_output(op, src, output, in_place)


def tree_line(
    req_id: int, op: str, src: str, dst: str, key: Optional[str], overwrite: bool, skip_existing: bool
) -> bytes:
    head = line_head(op, key, overwrite, recursive=True, skip_existing=skip_existing)
    return head.line(req_id, wire_name(src, by_path=True), wire_name(dst, by_path=True))


def single_file(
    req_id: int,
    op: str,
    src: str,
    dst: str,
    key: Optional[str],
    overwrite: bool,
    in_place: bool,
    skip_existing: bool,
) -> "tuple[bytes, Optional[PassedFiles]]":
    """A single file's request line and, unless it goes by path, its opened files. It goes
    by path with ``skip_existing`` (which needs a named output) and on file systems without
    ``O_TMPFILE``, as the CLI's do."""
    files: Optional[PassedFiles] = None
    if not skip_existing:
        try:
            files = PassedFiles(src, dst, overwrite, in_place)
        except NoTmpfile:
            files = None
    by_path = files is None
    try:
        head = line_head(op, key, overwrite, skip_existing=skip_existing, fds=not by_path)
        line = head.line(req_id, wire_name(src, by_path=by_path), wire_name(dst, by_path=by_path))
    except BaseException:
        if files is not None:
            files.close()
        raise
    return line, files


class FileCall:
    """One call of a file method (``encrypt``, ``decrypt``, ``rewrap``), as both clients make
    it: its paths planned, its request line, and for a single file on descriptors its opened
    files. :meth:`result` links a single file's output after ``done``; :meth:`close` (always)
    leaves nothing behind when there was no ``done``."""

    __slots__ = ("req_id", "op", "src", "dst", "line", "files", "tree", "timeout")

    def __init__(
        self,
        ids: "Iterator[int]",
        op: str,
        input: PathArg,
        output: Optional[PathArg],
        key: Optional[str],
        overwrite: bool,
        in_place: bool,
        tree: bool,
        skip_existing: bool,
        timeout: Optional[float],
    ) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or at least 0")
        self.timeout = timeout
        self.src, self.dst = plan(op, input, output, overwrite, in_place, skip_existing)
        self.req_id = next(ids)
        self.op = op
        self.tree = tree
        self.files: Optional[PassedFiles] = None
        if tree:
            self.line = tree_line(
                self.req_id, op, self.src, self.dst, key, overwrite, skip_existing
            )
        else:
            self.line, self.files = single_file(
                self.req_id, op, self.src, self.dst, key, overwrite, in_place, skip_existing
            )

    def fds(self) -> Sequence[int]:
        return self.files.fds() if self.files is not None else ()

    def sent(self) -> None:
        """The request left: the daemon holds its own copy of the input."""
        if self.files is not None:
            self.files.close_input()

    def result(self, done: Dict[str, Any]) -> "FileResult":
        if self.files is not None:
            self.files.commit(fsync=True)
        return file_result(self.op, self.src, self.dst, done)

    def close(self) -> None:
        if self.files is not None:
            self.files.close()
