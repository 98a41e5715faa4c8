"""The Clean stage: decode, normalize and filter raw records; carve dev/test out of train.

Determinism: splits come from a hash of the source text (SplitFractions), so the same input
lands in the same split whatever the number of workers or the order bundles run in.
"""

import collections
import dataclasses
import hashlib
import re
from typing import Optional

import apache_beam as beam

from pipeline import features, progress, sources
from pipeline import stats as stats_lib
from pipeline.batches import count_into_metrics, pack, unpack

PAIRS, STATS, DEAD_LETTERS, EVAL_KEYS = "pairs", "stats", "dead_letters", "eval_keys"
# Dead letters are grouped per file and range of this many lines: one piece of the
# dead-letter file each, so no single worker gets all of them.
DEAD_LETTER_RANGE_LINES = 1 << 20
DEAD_LETTER_TEXT_BYTES = 1024  # longer raw text is cut in the dead letter (it names the line)

# Whitespace-like control characters become spaces; any other C0/C1 control drops the pair.
_WHITESPACE_CONTROLS = re.compile("[\t\n\x0b\x0c\r\x85\u2028\u2029]")
_OTHER_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f]")
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

_DROPPED = stats_lib.DROPPED


@dataclasses.dataclass(frozen=True)
class SplitFractions:
    """Carves dev/test out of train by a hash of the normalized source text.

    h = sha256(source.strip().lower()); u = h % 100 + (h // 100 % 10000) / 10000 in [0, 100);
    test if u < 100 * test, dev if u < 100 * (test + dev), else train. Integer arithmetic on
    u * 10000 keeps whole percents exact: test=0.05 means exactly h % 100 < 5.
    """
    dev: float = 0.0
    test: float = 0.0

    def assign(self, digest: bytes) -> str:
        h = int.from_bytes(digest, "big")
        position = (h % 100) * 10000 + (h // 100) % 10000
        if position < round(self.test * 1_000_000):
            return "test"
        if position < round((self.test + self.dev) * 1_000_000):
            return "dev"
        return "train"


def source_digest(source: str) -> bytes:
    """sha256 of the source as splits and eval-overlap checks see it (stripped, lowercased)."""
    return hashlib.sha256(source.strip().lower().encode("utf-8")).digest()


def split_of(source: str, fractions: SplitFractions) -> str:
    return fractions.assign(source_digest(source))


class CleanPairs(beam.DoFn):
    """Decodes, normalizes and filters a batch of raw records; assigns carved splits.

    Main output: lists of (split, source, target, pair_id, source_key, where) with clean,
    stripped text; `where` is (origin, line) for dev/test pairs, None for train. Side
    outputs: `dead_letters` (unreadable records with origin and line, keyed by
    file and line range), `stats` (counts) and `eval_keys` (source keys of dev/test pairs,
    to drop train pairs that repeat them).
    """

    def __init__(self, *, fractions: Optional[SplitFractions], emit_eval_keys: bool):
        self._fractions = fractions
        self._emit_eval_keys = emit_eval_keys

    def process(self, batch):
        counts = collections.Counter()
        kept, dead, eval_keys = [], [], []
        read = collections.Counter()
        fractions, emit_eval_keys = self._fractions, self._emit_eval_keys
        need_keys = fractions is not None or emit_eval_keys
        any_control, fingerprint = _ANY_CONTROL.search, features.fingerprint
        for split, origin, number, raw_source, raw_target, problem, detail in unpack(batch):
            if split != "train":  # an explicit dev/test input: its lines, dropped or not
                counts[(split, stats_lib.ORIGIN_RECORDS, origin)] += 1
            if problem and problem not in sources.TRAIN_ONLY_SKIP_REASONS:
                read[split] += 1
                counts[(split, _DROPPED, problem)] += 1
                if problem in stats_lib.DEAD_LETTER_REASONS:
                    dead.append(dead_letter_row(problem, split=split, origin=origin,
                                                number=number, raw_source=raw_source,
                                                raw_target=raw_target, detail=detail))
                continue
            try:
                source = raw_source.decode("utf-8") if type(raw_source) is bytes else raw_source
                target = raw_target.decode("utf-8") if type(raw_target) is bytes else raw_target
            except UnicodeDecodeError as error:
                read[split] += 1
                counts[(split, _DROPPED, stats_lib.INVALID_UTF8)] += 1
                dead.append(dead_letter_row(stats_lib.INVALID_UTF8, split=split, origin=origin,
                                            number=number, raw_source=raw_source,
                                            raw_target=raw_target, detail=str(error)))
                continue
            has_control = any_control(source) or any_control(target)
            normalized = False
            if has_control:  # rare: the common path does no per-character work in Python
                source, target, normalized = _normalize_whitespace(source, target)
            source, target = source.strip(), target.strip()
            if need_keys:  # the split hash and the eval-overlap key
                digest = hashlib.sha256(source.lower().encode("utf-8")).digest()
                if fractions is not None and split == "train":
                    split = fractions.assign(digest)
            read[split] += 1
            if problem and split == "train":  # a further reference: only dev/test keep it
                counts[(split, _DROPPED, problem)] += 1
                continue
            if normalized:
                counts[(split, stats_lib.NORMALIZED)] += 1
            if not source or not target:
                counts[(split, _DROPPED, stats_lib.EMPTY)] += 1
                continue
            if has_control and (_OTHER_CONTROLS.search(source)
                                or _OTHER_CONTROLS.search(target)):
                counts[(split, _DROPPED, stats_lib.CONTROL_CHARS)] += 1
                dead.append(dead_letter_row(stats_lib.CONTROL_CHARS, split=split, origin=origin,
                                            number=number, raw_source=raw_source,
                                            raw_target=raw_target))
                continue
            key = digest[:16] if need_keys else b""
            kept.append((split, source, target, fingerprint(source, target), key,
                         None if split == "train" else (origin, number)))
            if emit_eval_keys and split != "train":
                eval_keys.append(key)
        for split, count in read.items():
            counts[(split, stats_lib.READ)] += count
        count_into_metrics(counts)
        progress.note("cleaned", len(kept))
        if kept:
            yield kept
        if dead:
            for key, rows in _by_line_range(dead).items():
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, (key, pack(rows)))
        if eval_keys:
            yield beam.pvalue.TaggedOutput(EVAL_KEYS, eval_keys)
        yield beam.pvalue.TaggedOutput(STATS, dict(counts))


def _normalize_whitespace(source: str, target: str) -> tuple:
    """Whitespace-like controls (tab, CR, LF, VT, FF, NEL, U+2028/9) -> one space each."""
    new_source = _WHITESPACE_CONTROLS.sub(" ", source)
    new_target = _WHITESPACE_CONTROLS.sub(" ", target)
    return new_source, new_target, new_source != source or new_target != target


def dead_letter_row(reason, *, split, origin, number, raw_source, raw_target, detail=""):
    """A dead-letter row (shard_files.dead_letter_json), raw text cut to a bounded size."""
    notes = [detail] if detail else []
    texts = []
    for side, text in (("source", raw_source), ("target", raw_target)):
        if text is not None and len(text) > DEAD_LETTER_TEXT_BYTES:
            notes.append(f"{side} cut to its first {DEAD_LETTER_TEXT_BYTES} of {len(text)}")
            text = text[:DEAD_LETTER_TEXT_BYTES]
        texts.append(None if text is None else repr(text))
    return (origin, number, split, reason, texts[0], texts[1], "; ".join(notes))


def _by_line_range(rows: list) -> dict:
    """Rows keyed by (file, range of DEAD_LETTER_RANGE_LINES lines): a batch is one range."""
    keyed = collections.defaultdict(list)
    for row in rows:
        keyed[(row[0], row[1] // DEAD_LETTER_RANGE_LINES)].append(row)
    return keyed
