"""`transferkit runs`: the run folders under a folder, one row each; `--compare A B` puts two side by side."""

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, out, pct
from transferkit.errors import ConfigError


@command()
def runs(
    runs_dir: Annotated[Path, typer.Argument(help="Folder holding run folders (searched 3 levels deep).")] = Path("runs"),
    sort: Annotated[str, typer.Option(help="Column to sort by (prefix - for descending), e.g. -val_accuracy.")] = "created",
    compare: Annotated[Optional[List[Path]], typer.Option(
        help="Two run folders: the settings that differ and their metrics side by side (give it twice).",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
):
    """List the runs under RUNS_DIR: source and fingerprint, backbone, size, images, accuracy, time."""
    from transferkit.runs.listing import compare_runs, find_runs, sort_runs

    if compare:
        if len(compare) != 2:
            raise ConfigError(f"--compare takes exactly two run folders (got {len(compare)}): "
                              "--compare runs/a --compare runs/b.")
        result = compare_runs(*compare)
        if as_json:
            print(json.dumps(result, indent=2))
            return
        table = Table("", str(compare[0]), str(compare[1]), title="settings that differ", title_justify="left")
        for key, (a, b) in result["settings"].items():
            table.add_row(key, str(a), str(b))
        out.print(table if result["settings"] else "No settings differ.")
        metrics = Table("", str(compare[0]), str(compare[1]), title="metrics", title_justify="left")
        for key, (a, b) in result["metrics"].items():
            show = pct if "accuracy" in key else (lambda v: "n/a" if v is None else str(v))
            metrics.add_row(key, show(a), show(b))
        out.print(metrics)
        return
    rows = sort_runs(find_runs(runs_dir), sort)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("run", "created", "source", "fingerprint", "backbone", "px", "images", "val acc", "test acc", "s",
                  "parent")
    for r in rows:
        table.add_row(r["name"], str(r["created"] or ""), str(r["source"] or ""), r["fingerprint"], str(r["backbone"]),
                      str(r["image_size"]), str(r["images"]), pct(r["val_accuracy"]), pct(r["test_accuracy"]),
                      "" if r["seconds"] is None else f"{r['seconds']:.0f}", Path(r["parent"]).name if r["parent"] else "")
    out.print(table if rows else f"No run folders under {runs_dir}.")
