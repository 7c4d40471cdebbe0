"""Training data: the WebDataset sample format, stage shards, the loader and the optional precompute.

sample_format owns member names, keys, the json member and the index; the writer (shard_writer,
encode) and the reader (loader) both import it.
"""
