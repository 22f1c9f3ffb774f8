"""clip-search: semantic image search over SigLIP embeddings, a FAISS index and an SQLite catalog."""

from clip_search.errors import ClipSearchError

__version__ = "0.1.0"
__all__ = ["ClipSearchError", "__version__"]
