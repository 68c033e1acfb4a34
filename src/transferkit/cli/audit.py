"""`transferkit audit`: rank the files whose class folder looks wrong; touches nothing."""

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from transferkit.cli.app import command, out, setup_logging


@command()
def audit(
    data_dir: Path = typer.Argument(..., help="Folder with one sub-folder of images per class.", show_default=False),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for suspects.csv and suspects.png (default: audit/<DATA_DIR name> in the current folder).", show_default=False),
    backbone: str = typer.Option("mobilenet_v2", help="Frozen backbone whose pooled features the out-of-fold models use."),
    image_size: Optional[int] = typer.Option(None, help="Input size (default: the backbone's).", show_default=False),
    weights_dir: Optional[Path] = typer.Option(None, help="Folder with local backbone weights (default: $TRANSFERKIT_WEIGHTS_DIR).", show_default=False),
    folds: int = typer.Option(5, help="Cross-validation folds for the out-of-fold probabilities (each class needs at least this many images)."),
    limit: int = typer.Option(30, help="Rows shown in the table (the CSV and --json have all)."),
    as_json: bool = typer.Option(False, "--json", help='Print {"suspects": [{"path", "given", "suggested", "score"}, ...]}, most suspicious first.'),
):
    """Files that look like they are in the wrong class folder, most suspicious first, with the suggested class."""
    setup_logging(quiet=as_json)
    from transferkit.analysis.audit import audit_folder, write_audit

    result = audit_folder(data_dir, backbone, image_size, str(weights_dir) if weights_dir else None, folds)
    files = write_audit(result, out_dir or Path("audit") / (data_dir.resolve().name or "data"))
    if as_json:
        print(json.dumps({**result.to_dict(), "files": files}, indent=2))
        return
    table = Table("path", "given", "suggested", "score")
    for s in result.suspects[:limit]:
        table.add_row(s.path, s.given, s.suggested, f"{s.score:.3f}")
    out.print(table)
    out.print(f"{len(result.suspects)} suspect(s) among {len(result.paths)} images "
              f"(out-of-fold accuracy {result.to_dict()['out_of_fold_accuracy']:.1%}); nothing was moved. "
              f"Files: {', '.join(files.values())}", highlight=False)
