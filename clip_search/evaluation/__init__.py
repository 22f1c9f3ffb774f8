"""Evaluation: retrieval metrics, data sets, a BM25 keyword baseline, zero-shot classification, reports.

``python -m clip_search eval DATASET`` runs it all (see docs/evaluation.md); the modules are usable on their own:
:mod:`.metrics` (pure numpy), :mod:`.datasets`, :mod:`.baseline`, :mod:`.embed_cache`, :mod:`.zeroshot`,
:mod:`.run` and :mod:`.report`. Importing this package loads none of them.
"""
