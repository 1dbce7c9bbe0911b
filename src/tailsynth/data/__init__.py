"""Data layer: sources (folder / npz / IDX / CSV / built-in), decoded-image cache, benchmark configs, splits.

Typical use::

    cfg = load_benchmark_config("pbc-lt", ["max_per_head=1000"])
    split = build_split(cfg, seed=0)            # cheap: indexes the source, decodes nothing
    split.write("runs/splits/pbc-lt-seed0.csv")  # + pbc-lt-seed0.json sidecar
    arrays = load_images(split.source, image_size=32, channels=3)   # decoded once, then cached
    x_train, y_train = split_arrays(split, arrays, "train")
"""
from .benchmark import BenchmarkConfig, find_benchmark, load_benchmark_config, preset_names
from .builder import build_split
from .builtin import BUILTINS
from .cache import cache_path, cache_root
from .config import DataConfig
from .decode import IMAGE_SUFFIXES, convert_array, decode_file
from .images import ImageArrays, load_images
from .index import SourceIndex, index_source
from .sources import (BuiltinSource, CsvSource, FolderSource, IdxSource, NpzSource, SourceConfig, describe_source,
                      resolve_data_path)
from .split import Split, split_arrays

__all__ = [
    "BUILTINS", "BenchmarkConfig", "BuiltinSource", "CsvSource", "DataConfig", "FolderSource", "IMAGE_SUFFIXES",
    "IdxSource", "ImageArrays", "NpzSource", "SourceConfig", "SourceIndex", "Split", "build_split", "cache_path",
    "cache_root", "convert_array", "decode_file", "describe_source", "find_benchmark", "index_source",
    "load_benchmark_config", "load_images", "preset_names", "resolve_data_path", "split_arrays",
]
