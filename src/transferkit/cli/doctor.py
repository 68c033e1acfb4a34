"""`transferkit doctor`: decode every file and say what training will make of it."""

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.data.files import DEFAULT_MAX_PIXELS
from transferkit.data.findings import DEFAULT_MIN_SIZE, NEAR_DISTANCE
from transferkit.cli.app import command, err, out, setup_logging
from transferkit.cli.options import DataDir, TfdsDataDir


@command()
def doctor(
    data_dir: DataDir,
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (findings, class counts, duplicates) instead of the report."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Refuse, undecoded, any image with more pixels (decompression bombs); warn above half of it."),
    min_size: int = typer.Option(DEFAULT_MIN_SIZE, help="Warn about images whose shorter side has fewer pixels."),
    near_distance: int = typer.Option(NEAR_DISTANCE, help="Perceptual-hash bits (of 256) within which two images are near duplicates."),
    val_dir: Optional[Path] = typer.Option(None, help="Validation folder with the same classes: scanned too, and checked for images leaked from DATA_DIR.", show_default=False),
    test_dir: Optional[Path] = typer.Option(None, help="Test folder with the same classes: scanned too, and checked for leaks.", show_default=False),
    cache: Optional[Path] = typer.Option(None, help="JSON cache file (outside the scanned folders): a re-run decodes only changed files.", show_default=False),
    show_all: bool = typer.Option(False, "--all", help="List every finding; by default the report shows the first 10 of each problem (--json always has all)."),
    tfds_data_dir: TfdsDataDir = None,
):
    """Decode every file of DATA_DIR and report, per file, what training would skip and why; nothing is written there.

    Exit code 0: clean (notes allowed); 1: warnings only; 2: at least one error, i.e. a file training would
    skip or a problem that stops it (fewer than two classes, a class with no usable image).
    """
    setup_logging(quiet=as_json)
    from rich.progress import Progress

    from transferkit.data.doctor import scan_dataset
    from transferkit.data.sources import resolve_source

    data_dir = resolve_source(data_dir, tfds_data_dir=tfds_data_dir)

    with Progress(console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task("decoding images", total=None)
        result = scan_dataset(
            data_dir, val_dir=val_dir, test_dir=test_dir, max_pixels=max_pixels, min_size=min_size,
            near_distance=near_distance, cache_path=cache,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_doctor_report(result, None if show_all else 10)
    raise typer.Exit(code=result.exit_code)


def _print_doctor_report(result, per_code: Optional[int]) -> None:
    """Findings grouped by severity (paths relative to DATA_DIR; `per_code` rows of each problem at most),
    then counts, duplicates and the verdict."""
    import os

    from rich.markup import escape

    from transferkit.data.findings import ERROR, INFO, WARNING

    def shown(path: str) -> str:
        relative = os.path.relpath(path, result.data_dir)
        return escape(path if relative.startswith("..") else relative)

    sections = ((ERROR, "Errors: files training skips, or problems that stop it", "bold red"),
                (WARNING, "Warnings: used, but worth a look", "bold yellow"),
                (INFO, "Notes: handled automatically", "bold"))
    for severity, title, style in sections:
        findings = result.of(severity)
        if findings:
            table = Table("path", "problem", "reason", title=f"{title} ({len(findings)})", title_justify="left",
                          title_style=style)
            listed: dict = {}
            for finding in findings:
                listed[finding.code] = listed.get(finding.code, 0) + 1
                if per_code is None or listed[finding.code] <= per_code:
                    table.add_row(shown(finding.path), finding.code, escape(finding.reason))
            for code, count in listed.items():
                if per_code is not None and count > per_code:
                    table.add_row("[dim]...[/]", code, f"[dim]and {count - per_code} more (--all or --json lists them)[/]")
            out.print(table)
    counts = Table("split", "class", "image files", "usable", "skipped", title="Images per class", title_justify="left")
    for s in result.class_summaries:
        counts.add_row(s.split, escape(s.name), str(s.images), str(s.usable), str(s.skipped))
    out.print(counts)
    if result.imbalance_ratio is not None:
        out.print(f"Imbalance ratio (largest / smallest training class): {result.imbalance_ratio:.2f}", highlight=False)
    exact = [g for g in result.duplicates if g.kind == "exact"]
    near = [g for g in result.duplicates if g.kind == "near"]
    across_classes = sum(len(set(g.classes)) > 1 for g in result.duplicates)
    across_splits = sum(len(set(g.splits)) > 1 for g in result.duplicates)
    out.print(f"Duplicates: {len(exact)} group(s) of identical files, {len(near)} of near-identical ones "
              f"({across_classes} across classes, {across_splits} across splits)", highlight=False)
    out.print(f"{len(result.images)} image file(s) checked in {result.seconds:.1f} s ({result.decoded} decoded, "
              f"{result.cached} from the cache)", highlight=False)
    verdict = {0: "[bold green]clean[/]", 1: "[bold yellow]warnings only: training will run[/]",
               2: "[bold red]training would skip files, or cannot run[/]"}[result.exit_code]
    out.print(f"{len(result.of(ERROR))} error(s), {len(result.of(WARNING))} warning(s), {len(result.of(INFO))} "
              f"note(s): {verdict} (exit {result.exit_code})", highlight=False)
