"""``logex-guarded``: LoGex's guided images kept only where an independent judge confirms them (``method.py``), and
the stage that judges them (``stages.py``)."""
from . import method  # noqa: F401  (registers the method)
