"""Composition: the typed experiment config, the stage graph built from the methods' requests, the shared stages
(split, train, evaluate, base diffusion, LoRA, synthesis, oracle, quality) and the report walk. The stage
machinery itself (store, runner, parallel runs) is ``tailsynth.engine``."""
from ..engine import MANIFEST, Artifact, ArtifactStore, Runner, Stage

__all__ = ["Artifact", "ArtifactStore", "MANIFEST", "Runner", "Stage"]
