"""Confidence methods beyond one first token: capability probe, whole-label sequence scoring, adaptive
self-consistency, verbalised confidence and ensembles. The statistics are pure modules; `methods.py`
runs them against an endpoint through `ModelClient`; `probe.py` says which ones an endpoint supports.
"""
