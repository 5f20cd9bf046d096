"""The server's HTML: plain server-rendered pages (no build step, no framework), every value escaped.

The result list, upload and removal are links and forms that work without JavaScript; one small inline
script only refreshes the status of documents still being indexed.
"""

from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from colqwen_pipeline.service.csrf import FORM_FIELD

THUMB_WIDTH = 360
VIEW_WIDTH = 1000

STYLE = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #57606a; --line: #d0d7de; --accent: #0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; overflow-wrap: anywhere; font: 16px/1.5 system-ui, sans-serif; color: var(--ink);
  background: #f6f8fa; }
header, main { max-width: 1400px; margin: 0 auto; padding: 0.75rem 1rem; }
header { display: flex; flex-wrap: wrap; gap: 1rem; align-items: baseline; }
header h1 { font-size: 1.25rem; margin: 0; } header a { color: var(--ink); }
a { color: var(--accent); }
:focus-visible { outline: 3px solid #f0a000; outline-offset: 2px; }
.skip { position: absolute; left: -9999px; } .skip:focus { left: 1rem; top: 0.5rem; background: #fff; }
.warning { background: #fff4ce; border: 1px solid #d4a72c; padding: 0.5rem 0.75rem; border-radius: 6px; }
.notice { background: #ddf4ff; border: 1px solid #54aeff; padding: 0.5rem 0.75rem; border-radius: 6px; }
form.inline { display: inline; }
.error { background: #ffebe9; border: 1px solid #cf222e; padding: 0.5rem 0.75rem; border-radius: 6px; }
form.search { display: flex; gap: 0.5rem; flex-wrap: wrap; margin: 0.5rem 0 1rem; }
form.search label { flex-basis: 100%; font-weight: 600; }
input[type=search] { flex: 1 1 16rem; font-size: 1.1rem; padding: 0.5rem; border: 1px solid var(--line); }
button { font-size: 1rem; padding: 0.45rem 1rem; border: 1px solid var(--accent); background: var(--accent);
  color: #fff; border-radius: 6px; cursor: pointer; }
button.quiet { background: #fff; color: var(--accent); }
ol.results { list-style: none; padding: 0; display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); }
ol.results a { display: block; background: #fff; border: 1px solid var(--line); border-radius: 6px;
  padding: 0.5rem; text-decoration: none; color: var(--ink); height: 100%; }
ol.results img { width: 100%; height: auto; display: block; border: 1px solid var(--line); background: #fff; }
.meta { display: block; margin-top: 0.4rem; overflow-wrap: anywhere; } .muted { color: var(--muted); }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 0.4rem; border-bottom: 1px solid var(--line); overflow-wrap: anywhere; }
table.documents td { overflow-wrap: break-word; } .actions { white-space: nowrap; width: 1%; }
nav.pages { display: flex; gap: 1rem; margin: 0 0 1rem; }
td[data-status=failed] { color: #a40e26; }
tr:has(td[data-status=failed]) { background: #fff5f5; }
.view { display: grid; gap: 1rem; grid-template-columns: minmax(0, 3fr) minmax(14rem, 1fr); }
.view img { width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
.tokens { display: flex; flex-wrap: wrap; gap: 0.35rem; padding: 0; list-style: none; }
.tokens a { display: inline-block; padding: 0.15rem 0.5rem; border: 1px solid var(--line); border-radius: 4px;
  background: #fff; text-decoration: none; } .tokens a[aria-current] { background: var(--accent); color: #fff; }
@media (max-width: 640px) { .view { grid-template-columns: 1fr; }
  ol.results { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  header { padding: 0.4rem 1rem; gap: 0.25rem 1rem; } header .tagline { display: none; }
  main > .warning { font-size: 0.85rem; padding: 0.3rem 0.5rem; margin: 0; }
  table.documents thead { display: none; } table.documents tr { display: block; border-bottom: 1px solid var(--line); }
  table.documents td { display: block; border: 0; padding: 0.15rem 0.4rem; } }
"""

STATUS_SCRIPT = """
(function () {
  if (!document.querySelector('[data-status="pending"]')) return;
  setTimeout(function poll() {
    fetch('/documents', {credentials: 'same-origin'}).then(function (r) { return r.json(); }).then(function (body) {
      var pending = false;
      body.documents.forEach(function (d) {
        var cell = document.getElementById('status-' + d.doc_id);
        if (cell) { cell.textContent = statusText(d); cell.dataset.status = d.status; }
        var note = document.querySelector('[data-notice-for="' + CSS.escape(d.doc_id) + '"] .state');
        if (note && d.status !== 'pending') {
          note.textContent = d.status === 'indexed' ? 'indexed' : 'failed (see its row)';
        }
        pending = pending || d.status === 'pending';
      });
      if (pending) setTimeout(poll, 3000);
    }).catch(function () { setTimeout(poll, 10000); });
  }, 3000);
  function statusText(d) {
    if (d.status === 'indexed') return 'indexed, ' + d.pages + (d.pages === 1 ? ' page' : ' pages');
    if (d.status === 'failed') return 'Failed: ' + d.reason;
    return d.detail === 'indexing' ? 'pending (indexing now)' : 'pending';
  }
})();
"""


def form_token(csrf: str) -> str:
    """The hidden field that proves a form was served by this server (csrf.py)."""
    return f'<input type="hidden" name="{FORM_FIELD}" value="{escape(csrf)}">'


def layout(title: str, body: str, model: dict[str, Any] | None, signed_in: bool = False, csrf: str = "") -> str:
    sign_out = (
        f'<form method="post" action="/sign-out">{form_token(csrf)}<button class="quiet">Sign out</button></form>'
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · colqwen-pipeline</title><style>{STYLE}</style></head>
<body><a class="skip" href="#main">Skip to content</a>
<header><h1><a href="/">colqwen-pipeline</a></h1><span class="muted tagline">visual search over document pages</span>
<a href="/#documents">Documents</a>{sign_out if signed_in else ""}</header>
<main id="main">{model_banner(model)}{body}</main></body></html>"""


def model_banner(model: dict[str, Any] | None) -> str:
    if model is None:
        return '<p class="warning" role="status">The model is still loading: search works once it is ready.</p>'
    if model.get("random_weights"):
        return (
            '<p class="warning" role="note"><strong>Test model:</strong> the server holds the random-weight test '
            "model, so rankings, scores and heatmaps mean nothing. Set COLQWEN_MODEL to real weights.</p>"
        )
    return ""


PAGE_SIZES = (12, 24, 48)  # results per page the form offers


def search_form(query: str, per_page: int = PAGE_SIZES[0]) -> str:
    options = "".join(
        f'<option value="{n}"{" selected" if n == per_page else ""}>{n} per page</option>' for n in PAGE_SIZES
    )
    return f"""<form class="search" role="search" action="/" method="get">
<label for="q">Search the pages</label>
<input id="q" name="q" type="search" value="{escape(query)}" required autofocus placeholder="e.g. pump pressure">
<select name="k" aria-label="Results per page">{options}</select>
<button type="submit">Search</button></form>"""


EMPTY_INDEX = (
    '<p role="status" class="notice">The index is empty: add a document below, or put files in the inbox '
    "and run <code>colqwen-pipeline ingest</code>.</p>"
)


def results_list(
    query: str,
    hits: list[dict[str, Any]],
    sizes: dict[tuple[str, int], tuple[int, int]],
    first_rank: int = 1,
    pager: str = "",
) -> str:
    """``hits``: this page of the results, ranked from ``first_rank``; ``pager``: links to the others."""
    if not hits:
        return f'<p role="status">No indexed page matches “{escape(query)}”.</p>{pager}'
    items = []
    for rank, hit in enumerate(hits, first_rank):
        width, height = sizes.get((hit["doc_id"], hit["page"]), (THUMB_WIDTH, round(THUMB_WIDTH * 1.3)))
        label = f"{hit['document']}, page {hit['page']}"
        items.append(
            f"""<li><a href="{escape(view_url(hit["doc_id"], hit["page"], query, rank=rank))}">
<img src="{escape(hit["page_url"])}?width={THUMB_WIDTH}" alt="{escape(label)}" width="{width}" height="{height}"
 loading="lazy"><span class="meta"><strong>{rank}. {escape(hit["document"])}</strong><br>
page {hit["page"]} · score {hit["score"]:.3f}</span></a></li>"""
        )
    shown = f"{len(hits)} best pages" if first_rank == 1 else f"pages {first_rank}–{first_rank + len(hits) - 1}"
    return (
        f'<p role="status">{shown} for “{escape(query)}”</p>'
        f'<ol class="results" start="{first_rank}">{"".join(items)}</ol>{pager}'
    )


def pager(query: str, per_page: int, page: int, more: bool) -> str:
    """Previous / next links of a result list (``more``: the search found pages beyond this one)."""

    def link(to: int, label: str) -> str:
        return f'<a href="/?{escape(urlencode({"q": query, "k": per_page, "page": to}))}">{label}</a>'

    links = ([link(page - 1, f"← previous {per_page}")] if page > 1 else []) + (
        [link(page + 1, f"next {per_page} →")] if more else []
    )
    return f'<nav class="pages" aria-label="Result pages">{"".join(links)}</nav>' if links else ""


def view_url(doc_id: str, page: int, query: str, word: int | None = None, rank: int | None = None) -> str:
    params = {"q": query} | ({"word": word} if word is not None else {}) | ({"rank": rank} if rank else {})
    return f"/view/{quote(doc_id, safe='')}/{page}?{urlencode(params)}"


def documents_section(documents: list[dict[str, Any]], csrf: str, notice: str = "") -> str:
    """``notice``: HTML the server wrote (server_notice), never text from the request."""
    rows = "".join(document_row(d) for d in documents) or '<tr><td colspan="3">No documents yet.</td></tr>'
    return f"""<section id="documents" aria-labelledby="documents-title"><h2 id="documents-title">Documents</h2>
{notice}<form action="/upload" method="post" enctype="multipart/form-data">{form_token(csrf)}
<label for="file">Add a document (PDF, DOCX, PPTX, XLSX, PNG, JPEG, TIFF):</label>
<input id="file" name="file" type="file" required> <button type="submit">Upload</button></form>
<table class="documents"><thead><tr><th scope="col">Document</th><th scope="col">Status</th><th scope="col"
 class="actions"><span class="muted">Remove</span></th></tr></thead><tbody>{rows}</tbody></table>
<script>{STATUS_SCRIPT}</script></section>"""


def document_row(document: dict[str, Any]) -> str:
    """Remove is a link to a page that asks first (confirm_removal): no one-click loss."""
    doc_id = document["doc_id"]
    ask = f"/documents/{quote(doc_id, safe='')}/remove"
    return f"""<tr><td>{escape(document["document"])}</td>
<td id="status-{escape(doc_id)}" data-status="{escape(document["status"])}">{escape(status_text(document))}</td>
<td class="actions"><a href="{escape(ask)}" aria-label="Remove {escape(document["document"])}">Remove…</a></td></tr>"""


def confirm_removal(doc_id: str, document: str, days: float, csrf: str) -> str:
    action = f"/documents/{quote(doc_id, safe='')}/delete"
    return f"""<h2>Remove {escape(document)}?</h2>
<p>It leaves the search index, and the file moves from the inbox to the trash, where it is kept for
{days:g} days. Until then you can restore it from the Trash list on the search page.</p>
<form method="post" action="{escape(action)}">{form_token(csrf)}
<button type="submit">Move {escape(document)} to the trash</button> <a href="/#documents">Cancel</a></form>"""


def restore_button(doc_id: str, document: str, csrf: str) -> str:
    action = f"/documents/{quote(doc_id, safe='')}/restore"
    return f"""<form class="inline" method="post" action="{escape(action)}">{form_token(csrf)}<button class="quiet"
 aria-label="Restore {escape(document)}">Restore</button></form>"""


def trash_section(trash: Any, csrf: str) -> str:
    """The trash's entries, newest first, each with its Restore button; nothing when it is empty."""
    entries = trash.entries()
    if not entries:
        return ""
    rows = "".join(
        f"<tr><td>{escape(e.document)}</td><td>{day(e.removed_at)}</td><td>{day(e.purge_at(trash.days))}</td>"
        f"<td>{restore_button(e.doc_id, e.document, csrf)}</td></tr>"
        for e in entries
    )
    return f"""<section id="trash" aria-labelledby="trash-title"><h2 id="trash-title">Trash</h2>
<table><thead><tr><th scope="col">Document</th><th scope="col">Removed</th><th scope="col">Deleted for good on</th>
<th scope="col"><span class="muted">Restore</span></th></tr></thead><tbody>{rows}</tbody></table></section>"""


def day(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(timestamp))


def added_notice(document: dict[str, Any]) -> str:
    """The page's status poll rewrites the state in it when the document's row changes."""
    state = {"indexed": "indexed", "failed": "failed (see its row)"}.get(document["status"], "being indexed")
    return (
        f'<p role="status" class="notice" data-notice-for="{escape(document["doc_id"])}">'
        f'{escape(document["document"])} added; it is <span class="state">{state}</span>.</p>'
    )


def restored_notice(document: dict[str, Any]) -> str:
    return f'<p role="status" class="notice">{escape(document["document"])} is back in the inbox.</p>'


def removed_notice(trashed: Any, days: float, csrf: str) -> str:
    return (
        f'<div role="status" class="notice">{escape(trashed.document)} moved to the trash (kept {days:g} days). '
        f"{restore_button(trashed.doc_id, trashed.document, csrf)}</div>"
    )


def status_text(document: dict[str, Any]) -> str:
    if document["status"] == "indexed":
        pages = document.get("pages")
        return f"indexed, {pages} {'page' if pages == 1 else 'pages'}" if pages is not None else "indexed"
    if document["status"] == "failed":
        return f"Failed: {document['reason']}"
    return "pending (indexing now)" if document.get("detail") == "indexing" else "pending"


def page_view(doc: dict[str, Any], query: str, words: list[str], word: int | None, match: dict[str, Any]) -> str:
    """``doc``: doc_id, page, document, pages; ``match``: the result's rank (from the results link) and score."""
    doc_id, page, pages = doc["doc_id"], doc["page"], doc["pages"]
    image = f"/pages/{quote(doc_id, safe='')}/{page}"
    if query:
        params = {"q": query, "width": VIEW_WIDTH} | ({"word": word} if word is not None else {})
        src, what = f"{image}/heatmap?{urlencode(params)}", "with the similarity heatmap"
    else:
        src, what = image, ""
    return f"""<p><a href="/?{urlencode({"q": query})}">← Back to the results</a></p>
<h2>{escape(doc["document"])}, page {page} of {pages}</h2>{match_line(query, match)}
<div class="view"><img id="page-image" src="{escape(src)}" alt="{escape(doc["document"])} page {page} {what}">
<div>{word_picker(doc_id, page, query, words, word, match.get("rank"))}
<p><a href="{escape(image)}">Open the page image without the heatmap</a></p>
{page_links(doc_id, page, pages, query)}</div></div>"""


def match_line(query: str, match: dict[str, Any]) -> str:
    parts = ([f"result {match['rank']}"] if match.get("rank") else []) + (
        [f"score {match['score']:.3f} (MaxSim)"] if match.get("score") is not None else []
    )
    return f'<p class="match">{" · ".join(parts)} for “{escape(query)}”</p>' if query and parts else ""


def word_picker(doc_id: str, page: int, query: str, words: list[str], word: int | None, rank: int | None) -> str:
    if not query:
        return "<p>Search for something to see where on the page it matches.</p>"
    current = ' aria-current="true"'

    def link(label: str, number: int | None) -> str:
        selected = current if number == word else ""
        url = view_url(doc_id, page, query, number, rank)
        return f'<li><a href="{escape(url)}"{selected}>{escape(label)}</a></li>'

    items = [link("all words", None)] + [link(text, i) for i, text in enumerate(words)]
    return f"""<h3>Where “{escape(query)}” matches</h3>
<p class="muted">Colour marks the page patches most similar to the query, stronger where the match is
closer (scaled to this page; the weaker half is left grey). Pick a word to see its own map.</p>
<ul class="tokens" aria-label="Query words">{"".join(items)}</ul>"""


def page_links(doc_id: str, page: int, pages: int, query: str) -> str:
    links = []
    if page > 1:
        links.append(f'<a href="{escape(view_url(doc_id, page - 1, query))}">← page {page - 1}</a>')
    if page < pages:
        links.append(f'<a href="{escape(view_url(doc_id, page + 1, query))}">page {page + 1} →</a>')
    return f"<p>{' · '.join(links)}</p>" if links else ""


def sign_in_page(message: str, csrf: str, next_path: str = "/") -> str:
    """``next_path``: where the browser was going (a path of this server), kept through the sign-in."""
    problem = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = f"""<h2>Sign in</h2>{problem}<form method="post" action="/sign-in">{form_token(csrf)}
<input type="hidden" name="next" value="{escape(next_path)}">
<label for="key">API key</label><br><input id="key" name="key" type="password" autocomplete="current-password"
 required autofocus size="40"> <button type="submit">Sign in</button></form>
<p class="muted">Programs send the key as <code>Authorization: Bearer KEY</code>.</p>"""
    return layout("Sign in", body, {})


def error_title(path: str, status: int) -> str:
    """The heading of an error page: what did not happen, in the words of the action that was tried."""
    for suffix, title in (
        ("/upload", "The document was not added"),
        ("/delete", "The document was not removed"),
        ("/restore", "The document was not restored"),
    ):
        if path.endswith(suffix):
            return title
    return {403: "Not allowed", 404: "Not found"}.get(status, "Something went wrong" if status >= 500 else "Not done")


def message_page(title: str, message: str, model: dict[str, Any] | None) -> str:
    return layout(
        title,
        f'<h2>{escape(title)}</h2><p class="error" role="alert">{escape(message)}</p>'
        '<p><a href="/">Back to the search page</a></p>',
        model,
    )
