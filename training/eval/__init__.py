"""`vjp eval`: the seed report's evaluation (FVD of generated vs held-out real videos from their
Japanese captions), with a baseline, the real-vs-real floor and a CLIP alignment proxy.

samples (choice, reading) -> generate (sampler, resume) -> features (I3D) + align -> fvd ->
evaluate (metrics.json) -> report (HTML section); config holds the models of both files.
"""
