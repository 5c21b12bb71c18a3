"""Plain-file writers for predictions: Parquet, CSV and an embeddings table, for use outside the store."""
