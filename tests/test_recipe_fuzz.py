"""Malformed recipes, generated: every one gives exit 2 and one line naming the problem, fast and
in bounded memory. The generator mutates the shipped recipes (seeded, so a failure reproduces):
wrong types, misspelt or missing keys at every level, out-of-range and non-finite numbers,
structural damage, duplicate keys, aliases, binary junk, other encodings, truncation."""

from __future__ import annotations

import copy
import random
import re
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from pakd_hf.cli import main

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
WANTED = 200  # malformed recipes that must be refused (mutations that happen to stay valid do not count)
ALIAS_BOMB = "".join(f"x{i}: &x{i} [" + ", ".join([f"*x{i - 1}"] * 9 if i else ['"lol"'] * 9) + "]\n" for i in range(8))


def _paths(node, prefix=()):
    """Every (path, value) inside a parsed recipe, mappings and lists included."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


def _set(root, path, value):
    node = root
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value


def _misspell(rng, key: str) -> str:
    if len(key) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(key) - 1)
        return key[:i] + key[i + 1] + key[i] + key[i + 2:] if key[i] != key[i + 1] else key + "s"
    return key + rng.choice(["s", "_", "x"])


def _mutate(rng: random.Random, text: str) -> tuple[bytes, str | None]:
    """A damaged recipe, and the key its one line must name (None where the damage has no one
    key: junk, encodings, nesting, ...)."""
    raw = yaml.safe_load(text)
    spots = [(p, v) for p, v in _paths(raw) if p]
    op = rng.randrange(15)
    if op == 14:  # the same again, more often: these are the rarer, nastier cases
        op = 12
    data = copy.deepcopy(raw)
    if op == 0:  # a wrong type anywhere
        path, _ = rng.choice(spots)
        value = rng.choice([True, "abc", [1, 2], {"a": 1}, 3, -1.5, None, [], {}])
        _set(data, path, value)
        # a mapping put where a mapping belongs is refused for a key inside it (required, unknown)
        named = None if isinstance(value, dict) else _key(path)
    elif op == 1:  # a misspelt key at any level
        maps = [(p, v) for p, v in _paths(data) if isinstance(v, dict) and v]
        path, node = rng.choice(maps)
        key = rng.choice([k for k in node if isinstance(k, str)])
        wrong = _misspell(rng, key)
        node[wrong] = node.pop(key)
        named = wrong
    elif op == 2:  # a missing key
        maps = [(p, v) for p, v in _paths(data) if isinstance(v, dict) and v]
        path, node = rng.choice(maps)
        key = rng.choice(list(node))
        node.pop(key)
        named = None  # the missing key, or the mapping that now lacks it, or a check it fed (any one)
    elif op == 3:  # a number out of range
        numbers = [(p, v) for p, v in _paths(data) if p and isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not numbers:
            return _mutate(rng, text)
        path, value = rng.choice(numbers)
        _set(data, path, rng.choice([-abs(value) - 1, 0, 10**30, -(10**30), 1e-300 * 0]))
        named = _key(path)
    elif op == 4:  # a number made non-finite (YAML spellings)
        numbers = [p for p, v in _paths(data) if p and isinstance(v, float)]
        if not numbers:
            return _mutate(rng, text)
        path = rng.choice(numbers)
        _set(data, path, "__NONFINITE__")
        damaged = yaml.safe_dump(data, sort_keys=False).replace("__NONFINITE__", rng.choice([".inf", "-.inf", ".nan", "1e400"]))
        return damaged.encode(), _key(path)
    elif op == 5:  # structural damage: a mapping or list replaced by the other kind, or emptied
        containers = [(p, v) for p, v in _paths(data) if p and isinstance(v, (dict, list))]
        path, node = rng.choice(containers)
        _set(data, path, list(node.values()) if isinstance(node, dict) else ({} if rng.random() < 0.5 else {"x": node}))
        named = None  # the container, or a key inside its new form
    elif op == 6:  # no stages at all, or a stage with no duration
        named = "stages"
        if rng.random() < 0.5:
            data["stages"] = []
        else:
            stage = rng.choice(data["stages"])
            stage.pop("steps", None)
            stage.pop("epochs", None)
    elif op == 7:  # a duplicate key (YAML would silently keep the last)
        lines = text.splitlines()
        keys = [i for i, line in enumerate(lines) if line and not line[0].isspace() and ":" in line and not line.startswith("#")]
        i = rng.choice(keys)
        key = lines[i].split(":")[0]
        # "- name" at the left edge starts a list item: a new stage, not a duplicate key
        return "\n".join(lines + [key + ": duplicate"]).encode(), key if key.isidentifier() else None
    elif op == 8:  # an alias bomb
        return (ALIAS_BOMB + text).encode(), None
    elif op == 9:  # binary junk
        return bytes(rng.randrange(256) for _ in range(rng.randrange(16, 4096))), None
    elif op == 10:  # another encoding
        return (text.encode(rng.choice(["utf-16", "utf-32", "latin-1"])) if rng.random() < 0.7
                else b"\xff\xfe" + text.encode()), None
    elif op == 11:  # cut short
        data_bytes = text.encode()
        return data_bytes[: rng.randrange(1, max(2, len(data_bytes)))], None
    elif op == 12:  # deep nesting, huge integers, control characters, merge keys, overlong names
        return rng.choice([
            "name: x\nstages: " + "[" * 5000 + "]" * 5000 + "\n",
            text + "\nseed: " + "9" * rng.choice([30, 5000]) + "\n",
            text.replace("name: ", "name: \"a\\x1b[31m\\nb\" # ", 1),
            "base: &b {name: s, steps: 1}\nname: x\ntask: text-classification\nstages: [{<<: *b}]\n",
            text.replace("dataset: ", "dataset: " + "x" * 300, 1) if "dataset: " in text else text + "\n:\n",
        ]).encode(), None
    else:  # indentation broken / a tab
        lines = text.splitlines()
        i = rng.randrange(len(lines))
        lines[i] = ("\t" if rng.random() < 0.5 else "   ") + lines[i]
        return "\n".join(lines).encode(), None
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode(), named


def _named(line: str) -> str | None:
    """The last key of the field a refusal names (``recipe field 'stages[0].pruning.ffn.keep': ...``
    -> ``keep``; ``layer_map[1]`` -> ``layer_map``); the duplicate-key message names its key
    in quotes instead."""
    found = re.search(r"recipe field '([^']*)'", line) or re.search(r"the key '([^']*)' appears twice", line)
    return re.sub(r"\[\d+\]$", "", found.group(1).split(".")[-1]) if found else None


def _key(path: tuple) -> str:
    """The last key of a path (a list index names its list)."""
    return next(str(step) for step in reversed(path) if isinstance(step, str))


def test_generated_malformed_recipes_are_refused_in_one_line_quickly(tmp_path, capsys):
    """Each refused mutation: exit 2, one line naming the damaged key (where it has one), in
    under 2 s and 300 MB; every fifth also through `pakd compress`, which must refuse it the
    same way before it makes its output folder."""
    rng = random.Random(20261202)
    texts = [p.read_text() for p in RECIPES]
    # The bounds are on the input, not on the first import of torch and transformers: the
    # shipped recipes are validated once first (a from-scratch teacher builds its config).
    assert main(["validate", *map(str, RECIPES)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    refused, tried, compressed = 0, 0, 0
    tracemalloc.start()
    try:
        while refused < WANTED:
            tried += 1
            assert tried < 4 * WANTED, "the generator produced too few malformed recipes"
            source = rng.randrange(len(texts))
            content, named = _mutate(rng, texts[source])
            path = tmp_path / f"case-{tried}.yaml"
            path.write_bytes(content)
            tracemalloc.reset_peak()
            started = time.perf_counter()
            code = main(["validate", str(path)])
            seconds = time.perf_counter() - started
            _, peak = tracemalloc.get_traced_memory()
            out = capsys.readouterr()
            case = f"case {tried} (mutation of {RECIPES[source].name}, kept in {path})"
            if code == 0:  # a mutation that stayed valid: fine, not counted
                continue
            lines = out.err.strip().splitlines()
            assert code == 2, f"{case}: exit {code}"
            assert len(lines) == 1 and "Traceback" not in out.err, f"{case}: {out.err[-2000:]}"
            assert str(path) in lines[0] and len(lines[0]) < len(str(path)) + 600, case
            assert named is None or _named(lines[0]) == named, f"{case}: does not name '{named}': {lines[0]}"
            assert seconds < 2.0, f"{case}: {seconds:.1f} s"
            assert peak < 300 * 2**20, f"{case}: {peak / 2**20:.0f} MB"
            refused += 1
            if refused % 5 == 0:  # compress refuses it too, before any folder or minute is spent
                out_dir = tmp_path / "out"
                assert main(["compress", str(path), "--output-dir", str(out_dir)]) == 2, case
                err = capsys.readouterr().err.strip().splitlines()
                assert len(err) == 1 and (named is None or _named(err[0]) == named), f"{case}: compress said {err}"
                assert not out_dir.exists(), f"{case}: compress made {out_dir}"
                compressed += 1
            path.unlink()
    finally:
        tracemalloc.stop()
    assert refused >= WANTED and compressed >= WANTED // 5


@pytest.mark.parametrize("content, fragment", [
    (ALIAS_BOMB + "name: x\n", "aliases"),
    ("name: x\nname: y\ntask: text-classification\nstages: [{name: s, steps: 1}]\n", "appears twice"),
    ("name: x\ntask: text-classification\nstages: [{name: s, epochs: .inf}]\n", "finite"),
    ("name: x\ntask: text-classification\nstages: [{name: s, steps: 1, learning_rate: 1e400}]\n", "finite"),
    ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested deeper"),
    ("name: x\nseed: " + "9" * 5000 + "\n", "cannot read"),
    ("name: x\ntask: text-classification\nstages: [{name: s, steps: 0x" + "f" * 2000 + "}]\n", "bits"),
    ("b: &b {name: s}\nname: x\ntask: text-classification\nstages: [{<<: *b, steps: 1}]\n", "aliases"),
    ("name: x\ntask: text-classification\nstages: [{<<: {name: s}, steps: 1}]\n", "merge keys"),
    ("name: \"a\\nb\"\ntask: text-classification\nstages: [{name: s, steps: 1}]\n", "printable"),
])
def test_known_attacks_are_refused_by_name(tmp_path, capsys, content, fragment):
    path = tmp_path / "r.yaml"
    path.write_text(content)
    started = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    assert time.perf_counter() - started < 2.0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_a_ten_megabyte_recipe_is_refused_without_reading_it(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("name: x\n" + "# padding\n" * 1_000_000)
    started = time.perf_counter()
    assert main(["validate", str(path)]) == 2
    assert time.perf_counter() - started < 2.0 and "the most a recipe may be" in capsys.readouterr().err
