"""Where on a page a query matched: per patch, the similarity of the page's stored token vectors with
the query's, drawn over the page image.

A stored page is every non-padded token of the model's input: the fixed prompt's tokens before the
image, one token per merged patch (row by row), then the prompt's tail. The grid is the model
family's (``ModelFamily.patch_grid``: the processor's ``get_n_patches`` on the page's size with the
family's merge size, as colpali-engine's interpretability helpers take it; 28-px tiles for
ColQwen2.5, 32-px for ColQwen3) and is checked against the stored token count, so a page embedded
under other settings is refused instead of drawn wrong.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

HEAT_COLOUR = (235, 80, 0)
MAX_ALPHA = 0.6  # the page stays readable under the strongest match
FLOOR = 0.5  # patches in the lower half of the page's range stay unpainted: the match stands out
AUGMENTATION_TOKENS = 10  # colpali-engine's query suffix: query_augmentation_token x 10


class GridMismatch(Exception):
    """The stored vectors do not fit the processor's patch grid for this page."""


@dataclass(frozen=True)
class PatchGrid:
    prefix: int  # prompt tokens before the image
    n_x: int  # patches across
    n_y: int  # patches down
    suffix: int  # prompt tokens after the image

    @property
    def tokens(self) -> int:
        return self.prefix + self.n_x * self.n_y + self.suffix


def prompt_tokens(processor: Any) -> tuple[int, int]:
    """(before, after) the image tokens in the processor's image prompt: the same for every page."""
    ids = processor.process_images([Image.new("RGB", (64, 64), "white")])["input_ids"][0]
    positions = (ids == processor.image_token_id).nonzero().flatten()
    return int(positions[0]), int(len(ids) - positions[-1] - 1)


def patch_grid(patches: tuple[int, int], size: tuple[int, int], stored: int, prompt: tuple[int, int]) -> PatchGrid:
    """The page's grid from the family's ``patches`` (across, down) for a page of ``size``; GridMismatch if
    ``stored`` tokens are not what the loaded model makes of the page."""
    grid = PatchGrid(prompt[0], patches[0], patches[1], prompt[1])
    if grid.tokens != stored:
        raise GridMismatch(
            f"the page has {stored} stored token vectors but the loaded processor makes {grid.tokens} of a "
            f"{size[0]}x{size[1]} page (embedded with another COLQWEN_MAX_VISUAL_TOKENS or model?): reindex it"
        )
    return grid


def similarity_maps(page_vectors: np.ndarray, query_vectors: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """(query tokens, n_y, n_x): each query token's dot product with each patch's vector.

    The computation of colpali-engine's ``get_similarity_maps_from_embeddings`` (image tokens picked by
    the mask, laid out row by row, einsum with the query), in numpy: importing its ``interpretability``
    package pulls in einops, matplotlib and seaborn, which the server does not need for one product.
    """
    start = grid.prefix
    patches = np.asarray(page_vectors[start : start + grid.n_x * grid.n_y], dtype=np.float32)
    patches = patches.reshape(grid.n_y, grid.n_x, -1)
    return np.einsum("qd,yxd->qyx", np.asarray(query_vectors, dtype=np.float32), patches)


@dataclass(frozen=True)
class QueryWord:
    text: str
    tokens: tuple[int, ...]  # positions of its tokens in the query's vectors


def query_words(processor: Any, query: str) -> list[QueryWord]:
    """The words of ``query`` with the positions of their subword tokens. The prompt's prefix and the
    augmentation tokens (``<|endoftext|>`` x 10) belong to no word: they count in the score, not in the
    chips. A processor that builds its query prompt otherwise gets one word per non-special token."""
    ids = processor.process_queries([query])["input_ids"][0].tolist()
    prefix = getattr(processor, "query_prefix", "")
    suffix = getattr(processor, "query_augmentation_token", "") * AUGMENTATION_TOKENS
    encoded = processor.tokenizer(prefix + query + suffix, return_offsets_mapping=True)
    if encoded["input_ids"] != ids:
        special = set(processor.tokenizer.all_special_ids)
        decode = processor.tokenizer.decode
        labels = [(n, decode([i]).strip()) for n, i in enumerate(ids) if i not in special]
        return [QueryWord(label, (n,)) for n, label in labels if label]
    spans = [(m.start() + len(prefix), m.end() + len(prefix)) for m in re.finditer(r"\S+", query)]
    tokens: list[list[int]] = [[] for _ in spans]
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        word = next((n for n, (first, last) in enumerate(spans) if start < last and end > first), None)
        if word is not None:
            tokens[word].append(position)
    text = prefix + query
    pairs = zip(spans, tokens, strict=True)
    return [QueryWord(text[first:last], tuple(found)) for (first, last), found in pairs if found]


def word_map(maps: np.ndarray, word: QueryWord) -> np.ndarray:
    """A word's map: the mean over its subword tokens' maps (each token adds its own best match to MaxSim)."""
    return maps[list(word.tokens)].mean(axis=0)


def maxsim(page_vectors: np.ndarray, query_vectors: np.ndarray) -> float:
    """The page's score as the index computes it: per query token its best page token, summed."""
    page, query = np.asarray(page_vectors, dtype=np.float32), np.asarray(query_vectors, dtype=np.float32)
    return float((query @ page.T).max(axis=1).sum())


def combined_map(maps: np.ndarray, token: int | None) -> np.ndarray:
    """One token's map, or the max over query tokens (what MaxSim takes from each patch)."""
    return maps[token] if token is not None else maps.max(axis=0)


def normalised(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def overlay(page: Image.Image, heat: np.ndarray, width: int) -> bytes:
    """PNG of the page at ``width`` pixels, in grey, with ``heat`` ([0, 1] per patch) above FLOOR laid over
    it in colour, more opaque where the similarity is higher: only the best patches are coloured."""
    height = max(1, round(page.height * width / page.width))
    base = ImageOps.grayscale(page.convert("RGB")).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    strength = np.clip((np.asarray(heat, dtype=np.float32) - FLOOR) / (1 - FLOOR), 0, 1)
    levels = Image.fromarray(np.uint8(strength * 255 * MAX_ALPHA))
    alpha = levels.resize((width, height), Image.Resampling.BILINEAR)
    painted = Image.composite(Image.new("RGB", base.size, HEAT_COLOUR), base, alpha)
    buffer = io.BytesIO()
    painted.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
