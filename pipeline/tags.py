"""Closed-vocabulary tagging: the model's free-text answer mapped onto the known tags.

Pure Python (no Ray, no torch) so the job spec can validate vocabularies with the same
word rules the parser uses.

Rules of `parse_tags`:
- case-insensitive; words are runs of letters and digits, so whitespace, commas and any
  other punctuation separate them;
- punctuation (anything but whitespace) also ends a phrase: a multi-word vocabulary entry
  such as "light blue" matches only where its words stand next to each other, separated by
  whitespace alone ("light, blue" is two words, which may match "light" and "blue");
- at each position the longest vocabulary phrase wins; a plural last word ("circles",
  "boxes", "berries") matches its singular entry only when the plural is not itself an entry;
- tags come back as the vocabulary spells them, in order of first appearance in the answer,
  each once;
- the second value counts the words that matched nothing, stopwords excluded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Letters and digits of any script; "_" is a word character for `\w` but not for us.
_WORD = re.compile(r"[^\W_]+")
# A segment is what lies between punctuation marks; phrases never cross one.
_SEGMENT_BREAK = re.compile(r"[^\w\s]|_")

STOPWORDS = frozenset(
    """
    a an the and or nor but with without of there here is are was were be been being it its
    this that these those in on at to from by for as into onto some any also both each
    i see can has have had which what tags tag
    """.split()
)


def words(text: str) -> list[str]:
    """The lowercase words of `text` (letters and digits; everything else separates)."""
    return _WORD.findall(text.lower())


def _segments(text: str) -> list[list[str]]:
    return [ws for ws in (words(part) for part in _SEGMENT_BREAK.split(text.lower())) if ws]


def _singulars(word: str) -> list[str]:
    """Singular candidates of a plural-looking word, most likely first."""
    out = []
    if len(word) > 3 and word.endswith("ies"):
        out.append(word[:-3] + "y")  # berries -> berry
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        out.append(word[:-1])  # circles -> circle
    if len(word) > 3 and word.endswith("es"):
        out.append(word[:-2])  # boxes -> box
    return out


def _phrase_table(vocabulary: Sequence[str]) -> tuple[dict[tuple[str, ...], str], int]:
    table: dict[tuple[str, ...], str] = {}
    for entry in vocabulary:
        key = tuple(words(entry))
        if key and key not in table:  # first spelling wins for entries equal up to case/punctuation
            table[key] = entry
    return table, max((len(k) for k in table), default=0)


def parse_tags(text: str, vocabulary: Sequence[str]) -> tuple[list[str], int]:
    """(known tags in order of first appearance, number of unknown non-stopword words)."""
    table, longest = _phrase_table(vocabulary)
    tags: list[str] = []
    seen: set[str] = set()
    unknown = 0
    for seg in _segments(text):
        i = 0
        while i < len(seg):
            match, width = None, 1
            for n in range(min(longest, len(seg) - i), 0, -1):
                key = tuple(seg[i : i + n])
                if key in table:
                    match, width = table[key], n
                    break
                for singular in _singulars(key[-1]):
                    if key[:-1] + (singular,) in table:
                        match, width = table[key[:-1] + (singular,)], n
                        break
                if match is not None:
                    break
            if match is None:
                if seg[i] not in STOPWORDS:
                    unknown += 1
            elif match not in seen:
                seen.add(match)
                tags.append(match)
            i += width
    return tags, unknown


def vocabulary_problem(entry: str) -> str | None:
    """Why `entry` cannot be a vocabulary entry, or None: lowercase words, single spaces."""
    if not isinstance(entry, str) or not entry:
        return "must be a non-empty string"
    if entry != entry.lower():
        return f"{entry!r} must be lowercase"
    if entry != " ".join(words(entry)):
        return f"{entry!r} must be words of letters or digits separated by single spaces"
    return None


def default_tag_prompt(vocabulary: Sequence[str]) -> str:
    """The question asked when a tag job gives no prompt of its own."""
    if not vocabulary:
        raise ValueError("a tag prompt needs a non-empty vocabulary")
    return "which of these tags apply: " + ", ".join(vocabulary) + " ? answer with the tags only ."
