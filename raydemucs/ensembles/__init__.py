"""Ensembles and pipelines: several models run on one input as one task (`spec`: what may be
asked, `plan`: the task's steps and their cache keys); the combining runs on a worker
(`raydemucs.separation.combine`)."""
