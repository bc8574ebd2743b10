"""Ingest: complete new raw files, identified by content, recorded once in the ledger."""
