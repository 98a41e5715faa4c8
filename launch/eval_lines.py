"""A dev/test split as its input lines, and the per-line outputs written from them.

Preprocessing records where each dev/test example came from (features.ORIGIN / LINE) and
each input's record count (metadata.json splits.<split>.origins). From them the evaluator
writes line i of hyp-<step>.txt for line i of the input, as every MT toolkit does, so the
output lines up with the test set for another scorer, a rater or a diff of two systems.
A source on several lines is decoded once; its hypothesis is written on each of them.
"""

import dataclasses
import os
from typing import NamedTuple

import numpy as np

from launch import shared_files
from pipeline import dataset, features

DROPPED = -1  # InputLine.source of a line preprocessing dropped (empty, malformed, ...)
TSV_COLUMNS = ("file", "line", "source", "reference", "hypothesis")


class InputLine(NamedTuple):
    """One input line of the split."""
    origin: str  # its file or dataset ("" when the data did not record it)
    line: int  # 1-based line or entry number in `origin` (0 when not recorded)
    source: int  # index into SplitText.sources, or DROPPED
    reference: str  # this line's target text ("" when dropped)


@dataclasses.dataclass
class SplitText:
    """What the evaluator decodes and scores, and the lines it writes outputs for."""
    sources: list[str]  # distinct source texts, in order of first input line
    references: list[list[str]]  # per distinct source, every reference (input order)
    source_ids: list[np.ndarray]  # per distinct source, its token ids [length] unpadded
    lines: list[InputLine]  # every input line of the split, in input order when `ordered`
    ordered: bool  # False for data written before origins were recorded: shard order

    @property
    def dropped(self) -> int:
        return sum(line.source == DROPPED for line in self.lines)


def read_split(*, data_dir: str, split: str, metadata: dict, pad_id: int) -> SplitText:
    """Reads every example of `split` and lays them out as the input's lines."""
    examples = []  # (origin, line, source text, target text, source ids)
    for batch in dataset.make_eval_dataset(data_dir=data_dir, split=split, batch_size=256):
        columns = [batch[key].numpy() for key in (features.ORIGIN, features.LINE,
                                                   features.INPUTS_TEXT, features.TARGETS_TEXT,
                                                   features.INPUTS)]
        for origin, line, source, target, ids in zip(*columns):
            examples.append((origin.decode(), int(line), source.decode(), target.decode(),
                             ids[ids != pad_id]))
    origins = metadata["splits"].get(split, {}).get("origins")
    ordered = origins is not None and all(example[0] for example in examples)
    if ordered:
        examples = in_input_order(examples, origins)
    text = SplitText(sources=[], references=[], source_ids=[], lines=[], ordered=ordered)
    position = {}  # source text -> its index in text.sources
    for origin, line, source, target, ids in examples:
        if source is None:
            text.lines.append(InputLine(origin, line, DROPPED, ""))
            continue
        if source not in position:
            position[source] = len(text.sources)
            text.sources.append(source)
            text.references.append([])
            text.source_ids.append(ids)
        text.references[position[source]].append(target)
        text.lines.append(InputLine(origin, line, position[source], target))
    return text


def in_input_order(examples: list[tuple], origins: list[dict]) -> list[tuple]:
    """`examples` sorted by (input, line), with a placeholder (source None) for every line
    of a listed input that preprocessing dropped. A split carved out of train lists none:
    its examples are ordered by file name, then line."""
    rank = {entry["file"]: index for index, entry in enumerate(origins)}
    present: dict[str, set] = {}
    for example in examples:
        present.setdefault(example[0], set()).add(example[1])
    examples = list(examples)
    for entry in origins:
        seen = present.get(entry["file"], set())
        examples += [(entry["file"], line, None, "", None)
                     for line in range(1, (entry.get("records") or 0) + 1) if line not in seen]
    return sorted(examples, key=lambda e: (rank.get(e[0], len(rank)), e[0], e[1]))


def line_hypotheses(text: SplitText, hypotheses: list[str]) -> list[str]:
    """One hypothesis per input line (empty for a dropped line), from one per source."""
    return ["" if line.source == DROPPED else hypotheses[line.source] for line in text.lines]


def write_hypotheses(out_dir: str, *, step: int, text: SplitText, hypotheses: list[str],
                     scores: dict[str, list[float]]) -> tuple[str, str]:
    """hyp-<step>.txt (line i: the hypothesis for input line i, empty for a dropped line)
    and hyp-<step>.tsv (a header, then file, line, source, reference, hypothesis and the
    sentence scores per input line), each written atomically. Returns their paths."""
    names = list(scores)

    def cell(value: str) -> str:  # a tab or newline would break the row
        return " ".join(value.split("\t")).replace("\n", " ")

    txt = [hypothesis + "\n" for hypothesis in line_hypotheses(text, hypotheses)]
    tsv = ["\t".join(TSV_COLUMNS + tuple(names)) + "\n"]
    for entry in text.lines:
        if entry.source == DROPPED:
            tsv.append("\t".join([cell(entry.origin), str(entry.line), "", "", ""]
                                 + [""] * len(names)) + "\n")
            continue
        hypothesis = hypotheses[entry.source]
        tsv.append("\t".join([cell(entry.origin), str(entry.line or ""),
                              cell(text.sources[entry.source]), cell(entry.reference),
                              cell(hypothesis)]
                             + [f"{scores[name][entry.source]:.2f}" for name in names]) + "\n")
    paths = (os.path.join(out_dir, f"hyp-{step}.txt"), os.path.join(out_dir, f"hyp-{step}.tsv"))
    for path, lines in zip(paths, (txt, tsv)):
        shared_files.write_text_atomically(path, "".join(lines))
    return paths
