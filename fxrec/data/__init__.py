"""Event logs, dataset specs, leak-free histories and batches."""
