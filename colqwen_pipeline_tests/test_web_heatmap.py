"""The heatmap a reader can use: one chip per query word (its subword tokens merged, the augmentation
tokens left out of the chips), a grey page with only the best-matching patches in colour, and the
page's score computed as the index computes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from colpali_engine.models import ColQwen2_5_Processor

    return ColQwen2_5_Processor.from_pretrained(str(tiny_model_dir))


def test_chips_are_the_query_words_with_their_subword_tokens(processor) -> None:
    from colqwen_pipeline.service.heatmap import query_words

    ids = processor.process_queries(["revenue by quarter"])["input_ids"][0].tolist()
    words = query_words(processor, "revenue by quarter")
    assert [w.text for w in words] == ["revenue", "by", "quarter"]
    positions = [p for w in words for p in w.tokens]
    assert positions == list(range(len(positions)))  # every token of the words, in order, each once
    assert len(positions) > 3  # the tiny tokenizer splits them ("re", "ven", "ue", ...)
    augmentation = set(ids[len(positions) :])
    assert augmentation == {processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")}  # scored, not shown
    assert [w.text for w in query_words(processor, "  pump,  pressure? ")] == ["pump,", "pressure?"]


def test_a_word_map_merges_its_tokens() -> None:
    from colqwen_pipeline.service.heatmap import QueryWord, word_map

    maps = np.stack([np.full((2, 2), value) for value in (1.0, 3.0, 10.0)])
    assert np.array_equal(word_map(maps, QueryWord("ab", (0, 1))), np.full((2, 2), 2.0))


def test_the_page_goes_grey_and_only_the_best_patches_are_coloured() -> None:
    import io

    from colqwen_pipeline.service.heatmap import overlay

    page = Image.new("RGB", (200, 200), (30, 120, 220))  # a blue page: its colour must not compete
    heat = np.array([[1.0, 0.4], [0.0, 0.0]])  # one best patch; one below the floor
    painted = np.asarray(Image.open(io.BytesIO(overlay(page, heat, 200))).convert("RGB"), dtype=int)
    cold, weak, hot = painted[150, 150], painted[20, 180], painted[20, 20]
    assert cold[0] == cold[1] == cold[2] and weak[0] == weak[1] == weak[2]  # grey
    assert hot[0] - hot[2] > 100  # coloured where the match is


def test_maxsim_is_the_sum_of_each_query_tokens_best_page_token() -> None:
    from colqwen_pipeline.service.heatmap import maxsim

    page = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=np.float16)
    query = np.array([[1.0, 0.0], [0.6, 0.8]])
    assert maxsim(page, query) == pytest.approx(1.0 + 0.8)
