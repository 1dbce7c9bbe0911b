"""Stages, fingerprints, the artifact store and the runner."""
from .runner import Runner, Stage
from .store import MANIFEST, Artifact, ArtifactStore

__all__ = ["Artifact", "ArtifactStore", "MANIFEST", "Runner", "Stage"]
