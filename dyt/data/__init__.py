"""Datasets and loaders, one file per data family."""
