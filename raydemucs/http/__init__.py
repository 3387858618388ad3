"""The HTTP front door: a Ray Serve FastAPI application in front of the scheduler actor.

Its replicas hold no state: every call ends in the scheduler actor (`raydemucs.scheduler.service`) or the
journal behind it, so a replica may die or be scaled at any time. Nothing here imports torch.
"""
