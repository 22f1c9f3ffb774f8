"""Queries: one model for every front end (parts, feedback, filters, order, page), its arithmetic and its run."""

from clip_search.search.filters import Filters
from clip_search.search.query import Part, Query
from clip_search.search.results import SearchHit, SearchPage
from clip_search.search.runner import QueryRunner

__all__ = ["Filters", "Part", "Query", "QueryRunner", "SearchHit", "SearchPage"]
