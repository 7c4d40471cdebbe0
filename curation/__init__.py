"""Curation core: sources -> probe -> analyze -> decide -> extract, with Parquet manifests."""

__version__ = "0.1.0"
