"""The ``search`` command's query flags: parts with weights, minus terms, feedback, filters, order and page.

A weight is written after a term as ``^W`` (Lucene's boost syntax): ``"golden retriever^2"``, ``--minus fruit^0.5``,
``--image pool.jpg^1.5``. Without one a term weighs 1.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clip_search.engine import SearchEngine
from clip_search.errors import ClipSearchError
from clip_search.search import Query, SearchPage

_WEIGHTED = re.compile(r"^(?P<term>.*\S)\^(?P<weight>\d+(?:\.\d+)?|\.\d+)$", re.DOTALL)


def split_weight(term: str) -> tuple[str, float]:
    """``"golden retriever^2"`` -> ("golden retriever", 2.0); a term without ``^W`` weighs 1."""
    match = _WEIGHTED.match(term.strip())
    if match is None:
        return term, 1.0
    weight = float(match["weight"])
    if weight == 0:
        raise ClipSearchError(f"a weight of 0 leaves the term out: drop {term!r} instead")
    return match["term"], weight


def add_search_command(sub: Any, handler: Callable[[argparse.Namespace], int]) -> None:
    search = sub.add_parser(
        "search",
        help="search by text, image, examples and filters",
        description="Texts, images and collection images add up (weights as TERM^W, e.g. 'golden retriever^2'); "
        "--minus terms are subtracted; --like/--unlike mark results good/bad (relevance feedback).",
    )
    search.add_argument("query", nargs="*", help="what to look for, in words (several texts are combined)")
    search.add_argument("--image", action="append", default=[], metavar="PATH", help="an image to search with")
    search.add_argument("--similar", action="append", default=[], metavar="ID", help="an image of the collection")
    search.add_argument("--minus", action="append", default=[], metavar="TEXT", help="move away from this text")
    search.add_argument("--like", action="append", type=int, default=[], metavar="ID", help="a result marked good")
    search.add_argument("--unlike", action="append", type=int, default=[], metavar="ID", help="a result marked bad")
    search.add_argument("--after", metavar="DATE", help="added on or after (2026-01-31 or 2026-01-31T12:00, UTC)")
    search.add_argument("--before", metavar="DATE", help="added before this date (UTC)")
    search.add_argument("--source", metavar="TEXT", help="'upload', or a folder that was ingested")
    search.add_argument("--caption", metavar="WORD", help="captions containing this word (or words)")
    search.add_argument("--orientation", choices=["landscape", "portrait", "square"])
    search.add_argument("--min-width", type=int, metavar="PX")
    search.add_argument("--min-height", type=int, metavar="PX")
    search.add_argument("--sort", choices=["relevance", "newest", "oldest"], default="relevance")
    search.add_argument("-k", type=int, default=None, help="results per page")
    search.add_argument("--page", type=int, default=1, help="which page of k results (from 1)")
    search.add_argument("--json", action="store_true", help="print results as JSON")
    search.add_argument("--key", help="a visitor key: also find the private photos uploaded with it")
    search.set_defaults(func=handler)


def build_query(engine: SearchEngine, args: argparse.Namespace) -> Query:
    """The engine query the flags describe."""
    query = engine.query(key=args.key)
    for text in args.query:
        term, weight = split_weight(text)
        query = query.plus(term, weight=weight)
    for path in args.image:
        name, weight = split_weight(path)
        # A file of this machine, chosen by its owner: the ingest limits, as `ingest` would apply to it (the app
        # holds visitors' query images to the stricter upload limits).
        query = query.plus(image=engine.decode(_read(name)).image, weight=weight)
    for similar in args.similar:
        image_id, weight = split_weight(similar)
        query = query.plus(id=image_id, weight=weight)
    for text in args.minus:
        term, weight = split_weight(text)
        query = query.minus(term, weight=weight)
    query = query.like(*args.like).unlike(*args.unlike)
    if query.is_empty and args.sort == "relevance":
        raise ClipSearchError('give a text ("a dog on a beach"), --image PATH, --similar ID or --like ID')
    query = query.where(
        after=args.after,
        before=args.before,
        source=args.source,
        caption=args.caption,
        orientation=args.orientation,
        min_width=args.min_width,
        min_height=args.min_height,
    )
    query = query.sort_by(args.sort).limit(args.k or engine.settings.search.default_k)
    return query.page(args.page)


def print_hits(page: SearchPage, *, as_json: bool, url: Callable[[str], str] = str) -> None:
    """A table for people, or JSON (``url`` rewrites each hit's URL, e.g. relative to the data dir)."""
    if as_json:
        rows = [dict(hit.to_dict(), url=url(hit.url)) for hit in page.hits]
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for rank, hit in enumerate(page.hits, page.start + 1):
        prob = "   -  " if hit.probability is None else f"{hit.probability:6.1%}"
        caption = f"  {hit.caption}" if hit.caption else ""
        print(f"{rank:3d}. id={hit.id:<6d} score={hit.score:.4f} p={prob}  {hit.source or hit.key}{caption}")
    if page.has_more:
        print(f"more results: --page {page.start // page.k + 2}", file=sys.stderr)


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ClipSearchError(f"cannot read {path}: {exc.strerror or exc}") from exc
