"""Caption backends: vllm (in-process engine), openai (any compatible server), transformers."""

from captioning.backends.base import CaptionBackend, GenRequest, GenResult, Sampling, make_backend

__all__ = ["CaptionBackend", "GenRequest", "GenResult", "Sampling", "make_backend"]
