"""Search as the server answers it, for /search (JSON) and the search page (HTML) alike."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from colqwen_pipeline.service.disclosure import public_image_path
from colqwen_pipeline.service.limits import Refused, check_doc_ids, check_query, check_query_tokens, check_top_k
from colqwen_pipeline.service.model import ModelHolder
from colqwen_pipeline.settings import Settings


def page_url(doc_id: str, page: int) -> str:
    return f"/pages/{quote(doc_id, safe='')}/{page}"


def search_pages(
    holder: ModelHolder, settings: Settings, query: str, top_k: int, doc_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    """Ranked pages as ``search --json`` prints them, plus ``page_url``; every limit checked first."""
    from colqwen_pipeline.index import make_index
    from colqwen_pipeline.index.base import IndexRefused

    check_query(query, settings)
    check_top_k(top_k, settings)
    check_doc_ids(doc_ids)
    check_query_tokens([query], holder.query_tokens, settings)
    vectors = holder.embed_queries([query]).vectors[0]
    try:
        hits = make_index(holder.settings).search([vectors], top_k=top_k, doc_ids=doc_ids)[0]
    except IndexRefused as error:  # e.g. a control character in doc_ids
        raise Refused(422, str(error)) from None
    return [public_hit(hit.as_dict(), settings) for hit in hits]


def public_hit(hit: dict[str, Any], settings: Settings) -> dict[str, Any]:
    image_path = public_image_path(hit["image_path"], settings.home_dir, settings.server_expose_paths)
    return hit | {"image_path": image_path, "page_url": page_url(hit["doc_id"], hit["page"])}
