"""Runnable examples of stepstone (a package, so ``examples.attachment_indexer:app`` imports)."""
