"""Free-text model answers parsed into a closed tag vocabulary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.tags import STOPWORDS, default_tag_prompt, parse_tags, vocabulary_problem, words

VOCAB = ["red", "light blue", "blue", "circle", "square", "box", "berry", "glass"]


@pytest.mark.parametrize(
    "text, tags, unknown",
    [
        ("red, circle", ["red", "circle"], 0),
        ("Circle. RED!", ["circle", "red"], 0),  # case-insensitive, order of first appearance
        ("red red circle red", ["red", "circle"], 0),  # deduplicated
        ("There is a red circle and a square.", ["red", "circle", "square"], 0),  # stopwords are free
        ("a light blue square", ["light blue", "square"], 0),  # phrase, not "blue"
        ("light  blue\nsquare", ["light blue", "square"], 0),  # any whitespace inside a phrase
        ("light, blue", ["blue"], 1),  # punctuation ends a phrase; "light" alone is unknown
        ("two circles and three boxes", ["circle", "box"], 2),  # plurals; numbers are unknown words
        ("berries", ["berry"], 0),
        ("light blues", ["light blue"], 0),  # plural of a phrase's last word
        ("glass glasses", ["glass"], 0),  # "glasses": not "glasse", but the -es rule gives "glass"
        ("a purple hexagon", [], 2),
        ("", [], 0),
        ("red;circle/square|box", ["red", "circle", "square", "box"], 0),
        ("red_circle", ["red", "circle"], 0),  # underscore separates words
    ],
)
def test_examples(text, tags, unknown):
    assert parse_tags(text, VOCAB) == (tags, unknown)


def test_plural_only_when_the_plural_is_not_itself_a_tag():
    assert parse_tags("circles", ["circle"]) == (["circle"], 0)
    assert parse_tags("circles", ["circle", "circles"]) == (["circles"], 0)
    assert parse_tags("circles and a circle", ["circles", "circle"]) == (["circles", "circle"], 0)
    assert parse_tags("bus", ["bu"]) == ([], 1)  # too short to be a plural


def test_vocabulary_spelling_is_returned_and_first_spelling_wins():
    assert parse_tags("LIGHT BLUE", ["light blue"]) == (["light blue"], 0)
    assert parse_tags("red", ["Red", "red"]) == (["Red"], 0)


def test_longest_phrase_wins():
    vocab = ["dark", "dark red", "dark red car"]
    assert parse_tags("dark red car", vocab) == (["dark red car"], 0)
    assert parse_tags("dark red cat", vocab) == (["dark red"], 1)
    assert parse_tags("dark dark red", vocab) == (["dark", "dark red"], 0)


def test_vocabulary_words_beat_stopwords():
    assert parse_tags("on the left", ["on"]) == (["on"], 1)


def test_vocabulary_problem():
    assert vocabulary_problem("light blue") is None and vocabulary_problem("4k video") is None
    assert "lowercase" in vocabulary_problem("Red")
    for bad in ("light  blue", " red", "red,", "t-shirt", "red_car"):
        assert "single spaces" in vocabulary_problem(bad), bad
    assert vocabulary_problem("") == "must be a non-empty string"


def test_default_tag_prompt_lists_the_vocabulary():
    prompt = default_tag_prompt(["red", "light blue"])
    assert "red, light blue" in prompt and prompt == default_tag_prompt(("red", "light blue"))
    with pytest.raises(ValueError):
        default_tag_prompt([])


# ---- properties ------------------------------------------------------------------------------

word = st.text(alphabet="abcdefghijklm", min_size=1, max_size=6)  # noise below uses other letters
entry = st.lists(word, min_size=1, max_size=3).map(" ".join)
vocabularies = st.lists(entry, min_size=1, max_size=12, unique=True)
separators = st.sampled_from([", ", ",", "; ", " . ", "\n- ", " / ", "! "])
noise_word = st.text(alphabet="nopqrstuvwxyz", min_size=4, max_size=8)


@settings(max_examples=200, deadline=None)
@given(vocabularies, st.data())
def test_listed_tags_come_back_in_order_deduplicated(vocab, data):
    picked = data.draw(st.lists(st.sampled_from(vocab), max_size=10))
    sep = data.draw(separators)
    tags, unknown = parse_tags(sep.join(picked), vocab)
    assert tags == list(dict.fromkeys(picked))
    assert unknown == 0


@settings(max_examples=200, deadline=None)
@given(vocabularies, st.data())
def test_unknown_counts_exactly_the_noise_words(vocab, data):
    picked = data.draw(st.lists(st.sampled_from(vocab), max_size=6))
    noise = data.draw(st.lists(noise_word, max_size=6))
    stop = data.draw(st.lists(st.sampled_from(sorted(STOPWORDS)), max_size=4))
    parts = picked + noise + stop
    order = data.draw(st.permutations(parts))
    tags, unknown = parse_tags(", ".join(order), vocab)
    # stopwords may be vocabulary words too (drawn from a-m): then they are tags, not noise
    assert unknown == len(noise)
    assert set(tags) == set(picked) | {s for s in stop if s in vocab}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.lists(entry, max_size=8))
def test_any_text_gives_known_unique_tags(text, vocab):
    tags, unknown = parse_tags(text, vocab)
    assert len(tags) == len(set(tags)) and set(tags) <= set(vocab)
    assert 0 <= unknown <= len(words(text))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklm ,.;\n!-ABCDEFGHIJKLM", max_size=80), vocabularies)
def test_case_does_not_matter(text, vocab):
    assert parse_tags(text.upper(), vocab) == parse_tags(text.lower(), vocab) == parse_tags(text, vocab)
