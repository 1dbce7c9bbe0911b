"""The README's examples work as written: every ```yaml block loads with the real config loader, and the
``tailsynth`` lines of its ```bash blocks parse and (``data build`` / ``data show`` / ``run --plan``) run,
on a small image folder written here from scikit-learn's 8x8 digits (nothing is downloaded). Also
``data build``'s decodability check (``--skip-corrupt``) and the corrupt-file message of ``load_images``."""
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from tailsynth.cli import cli
from tailsynth.data import Split, build_split, load_benchmark_config, load_images, split_arrays
from tailsynth.data.builder import round_half_up
from tailsynth.errors import TailsynthError

README = Path(__file__).resolve().parent.parent / "README.md"
CORRUPT_ID = "zz-truncated.png"  # sorts last in its class folder


def readme_blocks(language: str) -> list[str]:
    """The bodies of the README's code blocks fenced as ```language, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def readme_commands() -> list[list[str]]:
    """Every ``tailsynth ...`` command of the README's bash blocks as its arguments (comments dropped;
    ``a && tailsynth b`` gives ``b``)."""
    commands = []
    for line in (line for block in readme_blocks("bash") for line in block.splitlines()):
        words = shlex.split(line, comments=True)
        while words:
            part, words = (words[:words.index("&&")], words[words.index("&&") + 1:]) if "&&" in words \
                else (words, [])
            if part and part[0] == "tailsynth":
                commands.append(part[1:])
    return commands


def readme_command(*prefix: str) -> list[str]:
    found = [c for c in readme_commands() if c[:len(prefix)] == list(prefix)]
    assert found, f"README.md has no `tailsynth {' '.join(prefix)}` line"
    return found[0]


def benchmark_block() -> tuple[str, str, dict]:
    """The README's own-data benchmark YAML: (file name from its first-line comment, text, parsed)."""
    blocks = [b for b in readme_blocks("yaml") if "source" in (yaml.safe_load(b) or {})]
    assert len(blocks) == 1, "README.md should have one benchmark YAML block (the own-data example)"
    text = blocks[0]
    name = re.match(r"#\s*(\S+\.ya?ml)\s*\n", text)
    assert name, "the benchmark block should start with a comment naming its file (# my-benchmark.yaml)"
    return name.group(1), text, yaml.safe_load(text)


def write_digits_folder(root: Path, class_names: list[str]) -> dict[str, int]:
    """Digits 0, 1, 2, ... as 8x8 gray PNGs in one sub-folder per class name; returns the counts."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    counts = {}
    for digit, name in enumerate(class_names):
        folder = root / name
        folder.mkdir(parents=True)
        rows = np.flatnonzero(digits.target == digit)
        for i in rows:
            Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8), "L").save(folder / f"{i:04d}.png")
        counts[name] = len(rows)
    return counts


def write_with_data_path(text: str, data: dict, folder: Path, target: Path) -> Path:
    """``text`` with the data path of its source replaced by ``folder``, written to ``target``. The value
    is replaced whatever its key is called: a wrong key is left for the config loader to reject."""
    paths = [v for k, v in data["source"].items() if k != "kind" and isinstance(v, str)]
    assert len(paths) == 1, f"expected one data path in the README's source, got {data['source']}"
    target.write_text(text.replace(paths[0], str(folder)))
    return target


@pytest.fixture
def readme_project(tmp_path, monkeypatch):
    """A working directory holding the README's benchmark file, pointed at a digits folder whose
    classes are the README's class names. Returns (config file, per-class image counts)."""
    file_name, text, data = benchmark_block()
    counts = write_digits_folder(tmp_path / "my-images", list(data["head"]) + list(data["tail"]))
    config = write_with_data_path(text, data, tmp_path / "my-images", tmp_path / file_name)
    monkeypatch.chdir(tmp_path)
    return config, counts


def truncate_one_image(folder: Path, class_name: str) -> Path:
    """A PNG cut in the middle of its pixel data, added to ``class_name``'s folder."""
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    whole = folder / class_name / "whole.tmp.png"
    Image.fromarray(noise, "L").save(whole)
    target = folder / class_name / CORRUPT_ID
    target.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return target


def expected_rows(cfg, counts: dict[str, int]) -> list[list[str]]:
    """The count-table rows the LoGex recipe gives: test share, then val, then train (tail: n_tail)."""
    rows = []
    for name in cfg.head + cfg.tail:
        tail = name in cfg.tail
        test = round_half_up(cfg.test_fraction * counts[name])
        val = cfg.n_val_tail if tail else cfg.n_val_head
        train = cfg.n_tail if tail else counts[name] - test - val
        rows.append([name, "tail" if tail else "head", "-", str(train), str(val), str(test)])
    return rows


def table_rows(output: str, names: list[str]) -> list[list[str]]:
    return [line.split() for line in output.splitlines() if line.split()[:1] and line.split()[0] in names]


def test_every_yaml_block_loads_with_the_config_loader(tmp_path):
    blocks = readme_blocks("yaml")
    assert blocks, "README.md has no ```yaml block"
    for i, text in enumerate(blocks):
        data = yaml.safe_load(text)
        assert "source" in data, f"README yaml block {i} is not a benchmark config; add a check for its kind"
        classes = list(data["head"]) + list(data["tail"])
        write_digits_folder(tmp_path / f"images{i}", classes)
        path = write_with_data_path(text, data, tmp_path / f"images{i}", tmp_path / f"block{i}.yaml")
        cfg = load_benchmark_config(path)
        assert (cfg.source.kind, cfg.source.path) == ("folder", str(tmp_path / f"images{i}"))
        split = build_split(cfg)
        assert split.class_names == classes
        assert all(split.counts()[name]["train"] == cfg.n_tail for name in cfg.tail)


def test_readme_commands_parse():
    """Every ``tailsynth`` line of the README names a real command and only options it has."""
    commands = readme_commands()
    assert ["data", "build", "--config", benchmark_block()[0]] in commands
    for args in commands:
        command, rest, name = cli, list(args), "tailsynth"
        while isinstance(command, click.Group):
            assert rest and rest[0] in command.commands, f"`tailsynth {' '.join(args)}`: unknown command"
            name, command, rest = rest[0], command.commands[rest[0]], rest[1:]
        command.make_context(name, rest)  # raises click.UsageError on an unknown option or argument


def test_readme_data_build_and_show_lines(readme_project):
    config, counts = readme_project
    cfg = load_benchmark_config(config)
    result = CliRunner().invoke(cli, readme_command("data", "build"))
    assert result.exit_code == 0, result.output
    assert table_rows(result.output, list(counts)) == expected_rows(cfg, counts)
    assert build_split(cfg).count_table() in result.output
    assert "corrupt" not in result.output
    show = readme_command("data", "show")
    assert f"wrote {show[2]} in " in result.output  # the manifest the README's next line shows
    shown = CliRunner().invoke(cli, show)
    assert shown.exit_code == 0, shown.output
    assert table_rows(shown.output, list(counts)) == expected_rows(cfg, counts)


@pytest.mark.slow
def test_readme_run_line_plans(readme_project):
    """The README's ``tailsynth run`` line with ``--plan``: the experiment, benchmark file and methods
    resolve, and every method x seed is planned (nothing is trained)."""
    args = readme_command("run")
    result = CliRunner().invoke(cli, args + ["--plan"])
    assert result.exit_code == 0, result.output
    methods = next(a for a in args if a.startswith("methods="))[len("methods=["):-1].split(",")
    seeds = next(a for a in args if a.startswith("seeds="))[len("seeds=["):-1].split(",")
    for method in methods:
        for seed in seeds:
            assert re.search(rf"train_classifier .* {re.escape(method)} seed {seed} ", result.output), result.output
    assert re.search(rf"^split .* {benchmark_block()[2]['name']} ", result.output, flags=re.M)


def test_data_build_fails_on_a_truncated_image_naming_it_and_the_flag(readme_project):
    config, _ = readme_project
    bad = truncate_one_image(config.parent / "my-images", "normal")
    result = CliRunner().invoke(cli, ["data", "build", "--config", str(config)])
    assert isinstance(result.exception, TailsynthError), result.output
    message = str(result.exception)
    assert "1 corrupt or truncated image file(s)" in message
    assert str(bad) in message and "--skip-corrupt" in message
    assert not Path("runs/splits/my-lt-seed0.csv").exists()


def test_data_build_skip_corrupt_leaves_the_file_out(readme_project, tmp_path, recwarn):
    config, _ = readme_project
    truncate_one_image(config.parent / "my-images", "normal")
    full = build_split(load_benchmark_config(config))  # indexes files only: the corrupt one is in it
    assert f"normal/{CORRUPT_ID}" in full.source_ids
    result = CliRunner().invoke(cli, ["data", "build", "--config", str(config), "--skip-corrupt"])
    assert result.exit_code == 0, result.output
    assert f"skipped 1 corrupt or truncated image file(s), 1 of them in this split: normal/{CORRUPT_ID}" \
        in result.output
    split = Split.read("runs/splits/my-lt-seed0.csv")
    assert len(split) == len(full) - 1
    assert f"normal/{CORRUPT_ID}" not in split.source_ids
    assert split.meta["skipped_corrupt"] == [f"normal/{CORRUPT_ID}"]
    assert split.count_table() in result.output
    arrays = load_images(split.source, 8, 1, cache_dir=tmp_path / "cache", skip_corrupt=True)
    sizes = [len(split_arrays(split, arrays, which)[1]) for which in ("train", "val", "test")]
    assert sum(sizes) == len(split)
    assert not [w for w in recwarn if "corrupt" in str(w.message)]  # nothing left to drop at load time


def test_load_images_corrupt_error_names_the_run_override(readme_project, tmp_path):
    config, _ = readme_project
    bad = truncate_one_image(config.parent / "my-images", "rare_a")
    with pytest.raises(TailsynthError) as err:
        load_images(load_benchmark_config(config).source, 8, 1, cache_dir=tmp_path / "cache")
    assert str(bad) in str(err.value)
    assert "data.skip_corrupt=true" in str(err.value) and "skip_corrupt=True to" not in str(err.value)
