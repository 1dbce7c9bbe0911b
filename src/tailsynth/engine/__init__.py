"""The content-addressed machinery that knows no method: the artifact store, stages and the runner (cached,
resumable, fingerprinted), independent stages side by side (``parallel``), readers of finished artifacts
(``artifacts``) and the shard protocol of image-generating stages (``shards``)."""
from .runner import Built, Runner, Stage
from .store import MANIFEST, Artifact, ArtifactStore

__all__ = ["Artifact", "ArtifactStore", "Built", "MANIFEST", "Runner", "Stage"]
