"""The support index: enrolled embeddings per class, an HNSW graph over them, and their manifest."""

from indexes.support_index import SupportIndex, enroll_embeddings, remove_label

__all__ = ["SupportIndex", "enroll_embeddings", "remove_label"]
