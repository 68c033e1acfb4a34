"""`transferkit doctor`: every planted problem reported with its path and reason, nothing else, nothing written."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from typer.testing import CliRunner

from conftest import ALPACA, checksums, copy_subset
from dirty_data import build_dirty_dataset, near_copy, photo, sources
from transferkit.cli import app
from transferkit.data import list_class_folders
from transferkit.data import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from transferkit.data.doctor import scan_dataset, skipped_rows, usable_files, usable_labelled
from transferkit.data.duplicates import phash
from transferkit.data.findings import CODES, DEFAULT_MIN_SIZE, ERROR, NEAR_DISTANCE
from transferkit.errors import ConfigError, DataError

runner = CliRunner()


def doctor_cli(*args):
    return runner.invoke(app, ["doctor", *map(str, args)])


def snapshot(*folders: Path) -> dict:
    """Every entry under the folders, links not followed: content hash, size, mtime, link target."""
    state = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = os.path.join(root, name)
                stat = os.lstat(path)
                if os.path.islink(path):
                    state[path] = ("link", os.readlink(path), stat.st_mtime_ns)
                elif os.path.isdir(path):
                    state[path] = ("dir", stat.st_mtime_ns)
                else:
                    state[path] = ("file", hashlib.sha256(Path(path).read_bytes()).hexdigest(), stat.st_size,
                                   stat.st_mtime_ns)
    return state


def relative(finding, root: Path) -> tuple[str, frozenset]:
    def rel(path: str) -> str:
        return os.path.relpath(path, root)

    return finding.code, frozenset(rel(p) for p in (finding.path, *finding.related))


@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    return build_dirty_dataset(tmp_path_factory.mktemp("dirty"))


@pytest.fixture(scope="module")
def dirty_scan(dirty):
    return scan_dataset(dirty.root)


def small_set(dest: Path, per_class: int = 4) -> Path:
    return copy_subset(ALPACA, dest, per_class=per_class)


def test_every_planted_problem_is_reported_with_its_path_and_nothing_else(dirty, dirty_scan):
    reported = {relative(f, dirty.root) for f in dirty_scan.findings}
    assert reported == dirty.expected
    assert len(dirty_scan.findings) == len(dirty.expected)
    assert {code for code, _ in dirty.expected} == set(CODES) - {
        "unreadable", "too-few-classes", "empty-class", "class-mismatch", "imbalance", "oversized",
        "duplicate-across-splits", "near-duplicate-across-splits", "name-series", "series-across-splits",
    }, "the dataset-level and size-limit cases have their own tests below"
    for finding in dirty_scan.findings:
        assert finding.reason and finding.severity == CODES[finding.code]
        assert os.path.lexists(finding.path)
    reasons = {os.path.relpath(f.path, dirty.root) + ":" + f.code: f.reason for f in dirty_scan.findings}
    assert "ends early" in reasons["alpaca/truncated.jpg:truncated"]
    assert "HTML page" in reasons["alpaca/page.jpg:not-an-image"]
    assert "text file" in reasons["not alpaca/notes.png:not-an-image"]
    assert "HEIC" in reasons["alpaca/iphone.jpg:unsupported-format"]
    assert "PNG image under a '.jpg' name" in reasons["alpaca/png-named.jpg:extension-mismatch"]
    assert "3 frames: only the first frame is used" in reasons["alpaca/animated.gif:animated"]
    assert "144,000,000 pixels" in reasons["not alpaca/huge.png:too-many-pixels"]
    assert "'not alpaca'" in reasons[f"alpaca/{sorted((ALPACA / 'alpaca').iterdir())[1].name}:duplicate-across-classes"]
    assert dirty_scan.exit_code == 2


def test_usable_files_are_what_training_can_read(dirty, dirty_scan):
    usable = [os.path.relpath(p, dirty.root) for p in usable_files(dirty_scan)]
    errors = {os.path.relpath(f.path, dirty.root) for f in dirty_scan.of("error")}
    assert not errors & set(usable)
    assert {"alpaca/png-named.jpg", "alpaca/cmyk.jpg", "alpaca/grey16.png", "alpaca/linked.jpg",
            "alpaca/more/one.jpg", "alpaca/linked-folder/inside.jpg", "alpaca/copy.jpg"} <= set(usable)
    assert not any("loop" in p or "scan.ppm" in p or "notes.txt" in p or p.startswith(".") for p in usable)
    assert dirty_scan.class_counts() == {"alpaca": 22, "not alpaca": 12}
    labelled = usable_labelled(dirty_scan)
    assert labelled.classes == ("alpaca", "not alpaca") and labelled.class_counts() == dirty_scan.class_counts()
    rows = skipped_rows(dirty_scan)
    assert len(rows) == 12 and {r["code"] for r in rows} == {f.code for f in dirty_scan.of("error")}
    assert all(r["reason"] and r["class"] in labelled.classes for r in rows)


def test_clean_set_is_clean_and_matches_list_class_folders(tiny_dir):
    result = scan_dataset(tiny_dir)
    assert result.findings == () and result.exit_code == 0
    assert usable_files(result) == list(list_class_folders(tiny_dir).paths)
    assert result.imbalance_ratio == 1.0


def test_never_writes_into_the_data_folder(dirty, tmp_path):
    before = snapshot(dirty.root, dirty.outside)
    scan_dataset(dirty.root, cache_path=tmp_path / "cache.json", val_files=[str(dirty.root / "alpaca" / "copy.jpg")])
    assert doctor_cli(dirty.root, "--json", "--cache", tmp_path / "cache.json").exit_code == 2
    assert doctor_cli(dirty.root).exit_code == 2
    with pytest.raises(ConfigError, match="never writes to"):
        scan_dataset(dirty.root, cache_path=dirty.root / "alpaca" / "cache.json")
    assert snapshot(dirty.root, dirty.outside) == before


def test_cache_decodes_only_changed_files(tmp_path):
    data = small_set(tmp_path / "data")
    cut = next(iter(sources())).read_bytes()
    (data / "alpaca" / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    cache = tmp_path / "cache" / "scan.json"
    first = scan_dataset(data, cache_path=cache)
    assert (first.decoded, first.cached) == (9, 0) and cache.is_file()
    second = scan_dataset(data, cache_path=cache)
    assert (second.decoded, second.cached) == (0, 9)
    assert second.findings == first.findings and second.images == first.images
    # A changed file (new size and mtime) is decoded again; a deleted one leaves the cache.
    (data / "alpaca" / "cut.jpg").write_bytes(cut)
    (data / "not alpaca" / sorted(os.listdir(data / "not alpaca"))[0]).unlink()
    third = scan_dataset(data, cache_path=cache)
    assert (third.decoded, third.cached) == (1, 7) and third.findings == ()
    assert len(json.loads(cache.read_text())["files"]) == 8
    # Settings apply to cached facts; an image refused undecoded is decoded once the limit allows it.
    assert {f.code for f in scan_dataset(data, cache_path=cache, max_pixels=1000).findings} == {
        "too-many-pixels", "empty-class"}
    refused = tmp_path / "refused.json"
    assert scan_dataset(data, cache_path=refused, max_pixels=1000).decoded == 8
    again = scan_dataset(data, cache_path=refused)
    assert again.decoded == 8 and again.findings == ()
    assert scan_dataset(data, cache_path=refused).decoded == 0
    # A damaged cache is ignored, not trusted; so is a damaged entry.
    entries = json.loads(cache.read_text())
    first_key = sorted(entries["files"])[0]
    entries["files"][first_key] = {**entries["files"][first_key], "width": None}
    cache.write_text(json.dumps(entries))
    assert scan_dataset(data, cache_path=cache).decoded == 1
    cache.write_text("{not json")
    assert scan_dataset(data, cache_path=cache).decoded == 8


def test_pixel_limits_and_minimum_size(tmp_path):
    data = tmp_path / "sizes"
    pool = iter(sources())
    for name, size in (("big.png", 600), ("large.png", 400), ("fine.png", 300)):
        (data / "a").mkdir(parents=True, exist_ok=True)
        photo(next(pool), size).save(data / "a" / name)
    (data / "b").mkdir()
    photo(next(pool), 300).save(data / "b" / "fine.png")
    # Cut short: decoded, it would be 'truncated'; refused on its header, it is 'too-many-pixels'.
    big = (data / "a" / "big.png").read_bytes()
    (data / "a" / "big.png").write_bytes(big[: len(big) * 6 // 10])
    result = scan_dataset(data, max_pixels=200_000, min_size=350)
    found = {(os.path.relpath(f.path, data), f.code) for f in result.findings}
    assert found == {("a/big.png", "too-many-pixels"), ("a/large.png", "oversized"), ("a/fine.png", "too-small"),
                     ("b/fine.png", "too-small")}
    assert "360,000 pixels, above the limit of 200,000" in result.of("error")[0].reason
    assert usable_files(result) == [str(data / "a" / "fine.png"), str(data / "a" / "large.png"), str(data / "b" / "fine.png")]


def test_duplicates_across_splits_are_leaks(tmp_path):
    data = small_set(tmp_path / "data")
    a = sorted((data / "alpaca").iterdir())
    shutil.copy2(a[0], data / "alpaca" / "copy.jpg")
    (data / "alpaca" / "near.jpg").write_bytes(near_copy(photo(a[1], None)))
    within = scan_dataset(data)
    assert {relative(f, data) for f in within.findings} == {
        ("duplicate", frozenset({f"alpaca/{a[0].name}", "alpaca/copy.jpg"})),
        ("near-duplicate", frozenset({f"alpaca/{a[1].name}", "alpaca/near.jpg"})),
    }
    val_files = [str(data / "alpaca" / "copy.jpg"), str(data / "alpaca" / "near.jpg"),
                 str(sorted((data / "not alpaca").iterdir())[0])]
    split = scan_dataset(data, val_files=val_files)
    assert {relative(f, data) for f in split.findings} == {
        ("duplicate-across-splits", frozenset({f"alpaca/{a[0].name}", "alpaca/copy.jpg"})),
        ("near-duplicate-across-splits", frozenset({f"alpaca/{a[1].name}", "alpaca/near.jpg"})),
    }
    assert split.class_counts("validation") == {"alpaca": 2, "not alpaca": 1}
    assert usable_files(split, "validation") == val_files
    assert "held-out accuracy is overstated" in split.findings[0].reason


def test_separate_validation_and_test_folders(tmp_path):
    train = small_set(tmp_path / "train")
    val = tmp_path / "val"
    for name in ("alpaca", "not alpaca"):
        (val / name).mkdir(parents=True)
        for f in sorted((ALPACA / name).iterdir())[4:6]:
            shutil.copy2(f, val / name / f.name)
    leaked = sorted((train / "not alpaca").iterdir())[0]
    shutil.copy2(leaked, val / "not alpaca" / "leaked.jpg")
    test = tmp_path / "test"
    (test / "alpaca").mkdir(parents=True)
    for f in sorted((ALPACA / "alpaca").iterdir())[6:8]:
        shutil.copy2(f, test / "alpaca" / f.name)
    result = scan_dataset(train, val_dir=val, test_dir=test)
    found = {(f.code, f.path) for f in result.findings}
    assert found == {
        ("duplicate-across-splits", str(leaked)),
        ("class-mismatch", str(test)),
        ("empty-class", str(test / "not alpaca")),
    }
    leak = next(f for f in result.findings if f.code == "duplicate-across-splits")
    assert leak.related == (str(val / "not alpaca" / "leaked.jpg"),)
    assert result.class_counts("validation") == {"alpaca": 2, "not alpaca": 3}
    assert result.exit_code == 2


def test_set_level_problems(tmp_path):
    one = tmp_path / "one"
    shutil.copytree(small_set(tmp_path / "x") / "alpaca", one / "alpaca")
    assert [f.code for f in scan_dataset(one).findings] == ["too-few-classes"]

    broken = small_set(tmp_path / "broken")
    for f in (broken / "not alpaca").iterdir():
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    result = scan_dataset(broken)
    assert {f.code for f in result.of("error")} == {"truncated", "empty-class"}
    empty = next(f for f in result.findings if f.code == "empty-class")
    assert empty.path == str(broken / "not alpaca") and "all 4 image file(s) are unusable" in empty.reason
    assert result.imbalance_ratio is None

    uneven = small_set(tmp_path / "uneven", per_class=9)
    for f in sorted((uneven / "not alpaca").iterdir())[3:]:
        f.unlink()
    result = scan_dataset(uneven)
    assert [(f.code, f.severity) for f in result.findings] == [("imbalance", "warning")]
    assert result.imbalance_ratio == 3.0 and result.exit_code == 1
    assert "'alpaca' has 9 usable images, 'not alpaca' 3" in result.findings[0].reason


def test_truncated_files_fail_even_when_pillow_is_told_to_be_lenient(tmp_path):
    data = small_set(tmp_path / "data", per_class=2)
    cut = (data / "alpaca" / "cut.jpg")
    cut.write_bytes(next(iter(sources())).read_bytes()[:5000])
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        result = scan_dataset(data)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True, "the caller's setting is restored"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    assert [(f.code, f.path) for f in result.findings] == [("truncated", str(cut))]


def test_perceptual_hash_survives_resizing_but_separates_different_photos():
    first, second = (photo(p, None) for p in sources()[:2])
    copy = Image.open(io.BytesIO(near_copy(first))).convert("RGB")
    hashes = [phash(np.asarray(image)) for image in (first, copy, second)]
    assert bin(hashes[0] ^ hashes[1]).count("1") <= NEAR_DISTANCE // 2
    assert bin(hashes[0] ^ hashes[2]).count("1") > NEAR_DISTANCE


@pytest.mark.parametrize("settings, match", [
    (dict(max_pixels=0), "max_pixels must be an integer of at least 1, got 0"),
    (dict(max_pixels=True), "max_pixels .* got True"),
    (dict(min_size="32"), "min_size .* got '32'"),
    (dict(near_distance=257), "near_distance must be an integer from 0 to 256, got 257"),
    (dict(workers=0), "workers .* got 0"),
    (dict(val_files="alpaca/a.jpg"), "list of paths, got the single path"),
    (dict(val_files=["elsewhere/a.jpg"]), "1 path.* not image files of"),
])
def test_bad_arguments_are_refused_with_what_was_given(tiny_dir, settings, match):
    with pytest.raises(ConfigError, match=match):
        scan_dataset(tiny_dir, **settings)


def test_bad_folders_are_refused(tiny_dir, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        scan_dataset(tmp_path / "file.jpg")
    with pytest.raises(ConfigError, match="either val_dir .* or val_files"):
        scan_dataset(tiny_dir, val_dir=tiny_dir, val_files=[])
    with pytest.raises(ConfigError, match="is a folder; pass a file name"):
        scan_dataset(tiny_dir, cache_path=tmp_path)


def test_cli_json_and_exit_codes(dirty, dirty_scan, tiny_dir, tmp_path):
    result = doctor_cli(dirty.root, "--json")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["exit_code"] == 2 and report["counts"] == {"error": 12, "warning": 11, "info": 11}
    assert [f["path"] for f in report["findings"]] == [f.path for f in dirty_scan.findings]
    assert {"path", "severity", "code", "reason", "related"} == set(report["findings"][0])
    assert report["class_counts"][0] == {"split": "train", "class": "alpaca", "images": 29, "usable": 22, "skipped": 7}

    clean = doctor_cli(tiny_dir)
    assert clean.exit_code == 0 and "clean" in clean.stdout and "0 error(s), 0 warning(s)" in clean.stdout
    warned = small_set(tmp_path / "warned", per_class=3)
    photo(next(iter(sources()))).save(warned / "alpaca" / "renamed.jpg", "PNG")
    result = doctor_cli(warned, "--min-size", 16)
    assert result.exit_code == 1 and "extension-mismatch" in result.stdout and "renamed.jpg" in result.stdout

    bad = doctor_cli(tiny_dir, "--max-pixels", 0)
    assert bad.exit_code == 2 and "max_pixels must be an integer of at least 1, got 0" in bad.output


def test_cli_report_groups_by_severity(dirty):
    result = doctor_cli(dirty.root)
    text = result.stdout
    errors, warnings, notes = (text.index(title) for title in ("Errors:", "Warnings:", "Notes:"))
    assert errors < warnings < notes < text.index("Images per class")
    assert text.index("unsupported-format") < warnings < text.index("outside-class") < notes < text.index("exif-rotated")
    assert "loose.jpg" in text and "12 error(s), 11 warning(s), 11 note(s)" in text


def test_cli_defaults_are_the_api_defaults():
    import inspect

    from transferkit.cli.doctor import doctor

    defaults = {name: p.default.default for name, p in inspect.signature(doctor).parameters.items()
                if hasattr(p.default, "default")}
    assert (defaults["max_pixels"], defaults["min_size"], defaults["near_distance"]) == (
        DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE, NEAR_DISTANCE)


def test_opaque_alpha_and_plain_greyscale_are_not_worth_a_note(tmp_path):
    data = small_set(tmp_path / "data", per_class=2)
    pool = iter(sources())
    photo(next(pool)).convert("RGBA").save(data / "alpaca" / "opaque.png")  # alpha channel, all 255
    photo(next(pool)).convert("L").save(data / "alpaca" / "grey.png")
    assert scan_dataset(data).findings == ()


def test_doctor_does_not_load_tensorflow(tiny_dir):
    code = ("import sys; from transferkit.data.doctor import scan_dataset; scan_dataset(sys.argv[1]); "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), 'doctor must stay light'")
    subprocess.run([sys.executable, "-c", code, str(tiny_dir)], check=True, timeout=60)


def test_training_on_dirty_data_completes_and_lists_exactly_the_skipped_files(dirty, tmp_path):
    from transferkit import ImageClassifier
    from transferkit.runs.folder import read_csv

    from conftest import FAST

    before = checksums(dirty.root)
    run_dir = tmp_path / "run"
    settings = {**FAST, "image_size": 64, "epochs": 2, "fine_tune_epochs": 1, "cached_views": 2, "val_split": 0.3,
                "write_report": False}
    classifier = ImageClassifier(**settings).fit(dirty.root, out=run_dir)
    skipped = {os.path.relpath(row["path"], dirty.root) for row in read_csv(run_dir / "skipped.csv")}
    unusable = {
        path for code, paths in dirty.expected if CODES[code] == ERROR for path in paths
        if path.lower().endswith(IMAGE_EXTENSIONS)
    }
    assert skipped == unusable and skipped
    used = set(classifier.train_files_.paths) | set(classifier.val_files_.paths)
    assert not {os.path.join(dirty.root, p) for p in skipped} & used
    assert classifier.results_["val_accuracy"] is not None
    assert checksums(dirty.root) == before


def test_series_of_files_are_reported_and_a_series_in_two_splits_is_a_leak(tmp_path):
    """rps-style names (hand model + pose counter): a warning that a file-by-file split leaks them, and one
    naming the series where a validation folder holds poses of a training hand."""
    rng = np.random.default_rng(0)
    for root, hands in ((tmp_path / "train", range(1, 5)), (tmp_path / "val", (1, 5))):
        for gesture in ("paper", "rock"):
            for hand in hands:
                (root / gesture).mkdir(parents=True, exist_ok=True)
                for pose in range(3):
                    pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(root / gesture / f"{gesture}{hand:02d}-{pose:03d}.png")
    alone = scan_dataset(tmp_path / "train")
    notes = [f for f in alone.findings if f.code == "name-series"]
    assert len(notes) == 1 and "8 series" in notes[0].reason and "--group-by auto" in notes[0].reason
    assert alone.exit_code == 1  # a warning: the default split would leak
    both = scan_dataset(tmp_path / "train", val_dir=tmp_path / "val")
    leaks = sorted(Path(f.path).name for f in both.findings if f.code == "series-across-splits")
    assert leaks == ["paper01-000.png", "rock01-000.png"]  # hand 05 is only in validation: no leak
    assert not any(f.code == "name-series" for f in both.findings)  # training splits nothing off DATA_DIR
    leak = next(f for f in both.findings if f.code == "series-across-splits")
    assert "'paper01'" in leak.reason and "train and validation" in leak.reason and len(leak.related) == 5
    assert both.exit_code == 1
