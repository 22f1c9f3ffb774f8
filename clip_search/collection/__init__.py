"""The collection: its Lance table (the record), the in-memory vector index, and live refresh."""

from clip_search.collection.collection import Collection
from clip_search.collection.records import ImageRecord, NewImage, image_id
from clip_search.collection.table import CollectionTable

__all__ = ["Collection", "CollectionTable", "ImageRecord", "NewImage", "image_id"]
