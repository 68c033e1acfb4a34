"""`transferkit datasets`: the catalog of well-known sets; `datasets get NAME DEST` writes one as class folders."""

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from transferkit.cli.app import app, err, handle_errors, out, setup_logging
from transferkit.cli.options import AsJson, TfdsDataDir

datasets_app = typer.Typer(help="List well-known image sets (sources, size, classes, images, license, checksum); "
                           "`datasets get NAME DEST` writes one as class folders.",
                           no_args_is_help=False)
app.add_typer(datasets_app, name="datasets")


@datasets_app.callback(invoke_without_command=True)
@handle_errors
def datasets(ctx: typer.Context, as_json: AsJson = False):
    """List the catalog: sources (tfds: name, archive URLs), download size, classes, images, license, checksum.

    `transferkit datasets get NAME DEST` writes one as class folders; `transferkit train SOURCE` takes
    any of its sources directly.
    """
    if ctx.invoked_subcommand is not None:
        return
    from transferkit.data.catalog import datasets as catalog_entries
    from transferkit.data.fetch import format_size

    entries = catalog_entries()
    if as_json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return
    table = Table("name", "classes", "images", "download", "archives, sha256", "tfds:", "license")
    table.columns[0].no_wrap = True
    for e in entries:
        sums = [f"{a.file_name}\n  " + (f"{a.sha256[:12]}..." if a.sha256 else "[yellow]no checksum[/]")
                for a in e.archives]
        images = " + ".join(f"{n:,} {split}" for split, n in e.images)
        table.add_row(e.name, f"{len(e.classes)}: {escape(', '.join(e.classes))}", images, format_size(e.download_size),
                      "\n".join(sums), e.tfds or "-", escape(e.license))
    out.print(table)
    out.print("`transferkit datasets get NAME DEST` writes one as class folders; `--json` has the URLs, full "
              "checksums and the specs `transferkit train` takes (URL#sha256=...).", highlight=False)


@datasets_app.command("get")
@handle_errors
def get(
    name: Annotated[str, typer.Argument(help="A name from `transferkit datasets`.", show_default=False)],
    dest: Annotated[Path, typer.Argument(help="New or empty folder to write the class folders into.",
                                         show_default=False)],
    from_file: Annotated[Optional[List[Path]], typer.Option(
        "--from-file", help="A local copy of an archive (or a folder holding them), used instead of downloading; "
        "checked against the catalog checksum. Repeat for sets of several archives.", show_default=False)] = None,
    source: Annotated[Optional[str], typer.Option(
        help="url (the archives as published; default where there are any) or tfds (a prepared TFDS dataset).",
        show_default=False)] = None,
    tfds_data_dir: TfdsDataDir = None,
    as_json: AsJson = False,
):
    """Download (or take from --from-file) a catalog dataset, verify it, and write it as class folders at DEST.

    A set published split keeps train/, validation/ and test/ sub-folders, which `transferkit train DEST`
    uses as they are. DEST appears only when complete: a wrong checksum or a failed download leaves it as it was.
    """
    from transferkit.data.fetch import get_dataset

    setup_logging(quiet=as_json)
    result = get_dataset(name, dest, source=source, files=from_file or (), tfds_data_dir=tfds_data_dir)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for split, counts in result["images"].items():
        shown = ", ".join(f"{c} {n}" for c, n in counts.items())
        out.print(f"{split}: {sum(counts.values())} images ({escape(shown)})", highlight=False)
    out.print(f"[bold]{result['name']}[/] written to {escape(result['dest'])} ({result['image_count']} images, "
              f"from {result['source']}); train on it with `transferkit train {escape(result['dest'])}`.",
              highlight=False)
    err.print(f"Edit the class folders freely: `transferkit doctor {escape(result['dest'])}` checks them.",
              highlight=False)
