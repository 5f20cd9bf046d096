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
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

HEAT_COLOUR = (255, 40, 0)
MAX_ALPHA = 0.7  # the page stays readable under the strongest match


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


def combined_map(maps: np.ndarray, token: int | None) -> np.ndarray:
    """One token's map, or the max over query tokens (what MaxSim takes from each patch)."""
    return maps[token] if token is not None else maps.max(axis=0)


def normalised(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def overlay(page: Image.Image, heat: np.ndarray, width: int) -> bytes:
    """PNG of the page at ``width`` pixels with ``heat`` ([0, 1] per patch) laid over it in colour."""
    height = max(1, round(page.height * width / page.width))
    base = page.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    levels = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255 * MAX_ALPHA))
    alpha = levels.resize((width, height), Image.Resampling.BILINEAR)
    painted = Image.composite(Image.new("RGB", base.size, HEAT_COLOUR), base, alpha)
    buffer = io.BytesIO()
    painted.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()
