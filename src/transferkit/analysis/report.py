"""One self-contained report.html per run, and the dataset preview.

The report gathers what a person needs to trust (or distrust) a classifier: the
settings and data, what the model is fed (samples and augmentation), how training
went, the validation metrics, its mistakes, where it looks and what its backbone
sees. Every figure is a PNG embedded as base64, so the one file opens offline and
can be mailed around. A figure that cannot be made (a moved data folder, say)
becomes a note in its section instead of costing the whole report.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit import data
from transferkit.analysis import evaluation
from transferkit.runs import folder as rundir
from transferkit.errors import ConfigError, TransferkitError
from transferkit.analysis.preview import AUGMENTATION_DRAWS, describe_augmentation, plot_augmentation_preview, plot_samples
from transferkit.runs.trained import TrainedModel

logger = logging.getLogger("transferkit")

REPORT_FILE = "report.html"
GRADCAM_IMAGES = 6
JPEG_ABOVE_BYTES = 300_000  # embedded PNGs larger than this are photo grids; they go in as JPEG


CSS = """
:root { --ink:#1d2330; --muted:#5b6474; --line:#dfe3ea; --accent:#2a5db0; --bad:#a12020; --bg:#f6f7f9; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--ink); background:var(--bg); }
header { background:#1f3157; color:#fff; padding:18px 24px; }
header h1 { margin:0 0 4px; font-size:22px; }
header p { margin:0; color:#cfd8ea; }
header code { background:rgba(255,255,255,.12); color:#fff; }
nav { position:sticky; top:0; z-index:1; background:#fff; border-bottom:1px solid var(--line); padding:8px 24px; font-size:14px; }
nav a { color:var(--accent); text-decoration:none; margin-right:14px; white-space:nowrap; }
main { max-width:1180px; margin:0 auto; padding:8px 24px 48px; }
section { scroll-margin-top:48px; background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 20px 18px; margin:18px 0; }
h2 { font-size:18px; margin:4px 0 10px; }
h3 { font-size:15px; margin:14px 0 6px; }
p.note { color:var(--muted); margin:4px 0 10px; }
p.missing { color:var(--bad); }
figure { margin:10px 0; text-align:center; }
figure img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
table { border-collapse:collapse; margin:6px 0 12px; font-size:14px; }
th, td { border-bottom:1px solid var(--line); padding:4px 10px; text-align:left; vertical-align:top; }
th { background:#eef1f6; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr.avg td { font-style:italic; background:#fafbfc; }
.cards { display:flex; flex-wrap:wrap; gap:10px; margin:4px 0 8px; }
.card { border:1px solid var(--line); border-radius:6px; padding:8px 14px; min-width:150px; }
.card b { display:block; font-size:20px; }
.card span { color:var(--muted); font-size:13px; }
.bar { display:inline-block; height:10px; background:var(--accent); border-radius:2px; vertical-align:middle; }
.columns { display:flex; flex-wrap:wrap; gap:24px; }
.columns > div { flex:1 1 420px; min-width:0; }
dl.kv { display:grid; grid-template-columns:repeat(auto-fill, minmax(250px, 1fr)); gap:2px 18px; margin:4px 0 10px; }
dl.kv > div { display:flex; gap:8px; align-items:baseline; border-bottom:1px solid var(--line); padding:3px 0; min-width:0; }
dl.kv dt { color:var(--muted); font-size:13px; white-space:nowrap; }
dl.kv dd { margin:0; min-width:0; }
dl.kv > div.wide { grid-column:1 / -1; }
code { font-size:13px; background:#f0f2f5; padding:1px 4px; border-radius:3px; overflow-wrap:anywhere; }
"""


class _Report:
    """Sections of HTML, each built independently; figures are written to a scratch folder."""

    def __init__(self, scratch: Path):
        self.scratch, self.sections, self.figures = scratch, [], 0

    def figure_path(self, name: str) -> Path:
        self.figures += 1
        return self.scratch / f"{self.figures:02d}_{name}.png"

    def section(self, key: str, title: str, build) -> None:
        try:
            body = build()
        except (TransferkitError, OSError) as error:
            logger.warning("Report section '%s' left out: %s", title, error)
            body = f'<p class="missing">Not available: {html.escape(str(error))}</p>'
        self.sections.append((key, title, body))


def _embeddable(path: Path) -> tuple[str, bytes]:
    """(MIME type, bytes): PNG as is, unless it is a large photo grid, which JPEG holds at a fraction of the size."""
    raw = Path(path).read_bytes()
    if len(raw) <= JPEG_ABOVE_BYTES:
        return "image/png", raw
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as image:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        buffer = io.BytesIO()
        flat.save(buffer, format="JPEG", quality=88, optimize=True)
    return ("image/jpeg", buffer.getvalue()) if buffer.tell() < len(raw) else ("image/png", raw)


def _img(path: Path, alt: str, caption: str = "") -> str:
    mime, raw = _embeddable(path)
    encoded = base64.b64encode(raw).decode("ascii")
    caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (f'<figure><img src="data:{mime};base64,{encoded}" alt="{html.escape(alt)}">'
            f"{caption_html}</figure>")


def _table(header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[int] = (), row_class=None) -> str:
    head = "".join(f'<th class="num">{html.escape(h)}</th>' if i in numeric else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        css = f' class="{row_class(r)}"' if row_class and row_class(r) else ""
        cells = "".join(f'<td class="num">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
                        for i, cell in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{html.escape(value)}</b><span>{html.escape(label)}</span></div>'


def _config_section(trained: TrainedModel) -> str:
    params = {k: v for k, v in trained.params.items() if k != "verbose"}
    resolved = dict(trained.resolved)
    if isinstance(resolved.get("augmentation"), dict):
        resolved["augmentation"] = describe_augmentation(resolved["augmentation"])

    def grid(items: dict) -> str:
        cells = []
        for key, value in items.items():
            text = value if key == "augmentation" and isinstance(value, str) else repr(value)
            wide = ' class="wide"' if len(text) > 28 else ""  # long paths get a row of their own
            cells.append(f"<div{wide}><dt>{html.escape(key)}</dt><dd><code>{html.escape(text)}</code></dd></div>")
        return f'<dl class="kv">{"".join(cells)}</dl>'

    return ("<h3>Settings as given</h3>" + grid(params)
            + "<h3>Resolved at training time</h3>" + grid(resolved))


def _data_section(trained) -> str:
    summary = trained.data_summary
    train_counts = summary.get("train_class_counts", {})
    val_counts = summary.get("val_class_counts", {})
    largest = max([*train_counts.values(), *val_counts.values(), 1])
    rows = []
    for name in trained.classes:
        n_train, n_val = train_counts.get(name, 0), val_counts.get(name, 0)
        bar = f'<span class="bar" style="width:{120 * n_train / largest:.0f}px"></span>'
        rows.append((html.escape(name), str(n_train), str(n_val), str(n_train + n_val), bar))
    rows.append(("<b>total</b>", str(sum(train_counts.values())), str(sum(val_counts.values())),
                 str(sum(train_counts.values()) + sum(val_counts.values())), ""))
    source = summary.get("data_dir", "?")
    validation = summary.get("val_dir") or f"a stratified {trained.params.get('val_split', 0.2):.0%} of each class (seed {trained.seed})"
    return (
        f'<p class="note">Data: <code>{html.escape(str(source))}</code>; validation: {html.escape(str(validation))}.</p>'
        + _table(["class", "training", "validation", "total", "training images"], rows, numeric=(1, 2, 3))
    )


def _metrics_section(result: evaluation.Evaluation) -> str:
    metrics = result.metrics()
    cards = [_card(f"{metrics['accuracy']:.1%}", "accuracy"), _card(f"{metrics['loss']:.3f}", "log loss"),
             _card(f"{metrics['macro_avg']['f1']:.3f}", "macro F1"), _card(str(metrics["images"]), "images")]
    if "roc_auc" in metrics and metrics["roc_auc"] is not None:
        cards.append(_card(f"{metrics['roc_auc']:.3f}", "ROC-AUC"))
    for k, value in metrics.get("top_k_accuracy", {}).items():
        cards.append(_card(f"{value:.1%}", f"top-{k} accuracy"))
    rows = [(html.escape(name), _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), str(m["support"]))
            for name, m in metrics["per_class"].items()]
    for label, key in (("macro average", "macro_avg"), ("weighted average", "weighted_avg")):
        m = metrics[key]
        rows.append((label, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), str(m["support"])))
    n_classes = len(metrics["per_class"])
    unreadable = (f'<p class="missing">{len(result.unreadable)} unreadable file(s) skipped: '
                  + ", ".join(f"<code>{html.escape(p)}</code>" for p in result.unreadable) + "</p>"
                  if result.unreadable else "")
    return (
        f'<p class="note">On the validation split recorded in split.csv ({metrics["images"]} images).</p>'
        f'<div class="cards">{"".join(cards)}</div>' + unreadable
        + _table(["class", "precision", "recall", "F1", "support"], rows, numeric=(1, 2, 3, 4),
                 row_class=lambda r: "avg" if r >= n_classes else "")
    )


def _misclassified_section(result: evaluation.Evaluation, report: _Report) -> str:
    path = report.figure_path("misclassified")
    evaluation.plot_misclassified(result, path)
    wrong = result.misclassified()
    rows = [(str(rank), f"<code>{html.escape(Path(result.paths[i]).name)}</code>",
             html.escape(result.classes[result.labels[i]]), html.escape(result.classes[result.predicted[i]]),
             f"{result.confidence[i]:.1%}", f"{result.losses[i]:.3f}")
            for rank, i in enumerate(wrong[:20], start=1)]
    table = ("<h3>Worst mistakes</h3>" + _table(["#", "file", "true", "predicted", "confidence", "loss"], rows,
                                                  numeric=(0, 4, 5))) if rows else ""
    return _img(path, "misclassified gallery",
                f"{len(wrong)} of {len(result.paths)} validation images misclassified, highest loss first.") + table


def _gradcam_section(trained, result: evaluation.Evaluation, report: _Report, count: int) -> str:
    from transferkit.analysis.explain import explain_images, plot_gradcam_panel

    wrong = list(result.misclassified()[: count // 2])
    right = np.flatnonzero(result.predicted == result.labels)
    rng = np.random.default_rng(trained.seed)
    fill = rng.choice(right, size=min(count - len(wrong), len(right)), replace=False).tolist() if len(right) else []
    chosen = wrong + sorted(fill)
    explanations = explain_images(trained, [result.paths[i] for i in chosen])
    truth = {result.paths[i]: result.classes[result.labels[i]] for i in chosen}
    path = report.figure_path("gradcam")
    plot_gradcam_panel(explanations, path, [truth[e.path] for e in explanations])
    return ('<p class="note">Grad-CAM on the backbone\'s last feature map, for the predicted class: warm regions '
            "raised the score of that class. Mistakes first (red titles), then correct predictions.</p>"
            + _img(path, "Grad-CAM overlays"))


def _activations_section(trained, result: evaluation.Evaluation, report: _Report) -> str:
    from transferkit.analysis.explain import activation_grids, plot_activation_grid
    from transferkit.analysis.figures import plot_image_grid

    correct = np.flatnonzero(result.predicted == result.labels)
    index = int(correct[0]) if len(correct) else 0
    image_path = result.paths[index]
    grids = activation_grids(trained, image_path)
    parts = [
        f'<p class="note">Feature maps of <code>{html.escape(Path(image_path).name)}</code> '
        f"(true class {html.escape(result.classes[result.labels[index]])}) from early, middle and late in the "
        "backbone: edges and colours first, then parts, then whole-object detectors at coarse resolution.</p>"
    ]
    input_path = report.figure_path("activation_input")
    plot_image_grid([data.load_image(image_path, trained.image_size)], ["input, as the model sees it"],
                    input_path)
    parts.append(_img(input_path, "activation input image"))
    for grid in grids:
        path = report.figure_path(f"activations_{grid.index}")
        plot_activation_grid(grid, path, image_name=Path(image_path).name)
        parts.append(f"<h3>Layer {grid.index}: {html.escape(grid.layer)} ({grid.shape[0]}x{grid.shape[1]}, "
                     f"{grid.shape[2]} channels)</h3>" + _img(path, f"activations of {grid.layer}"))
    return "".join(parts)


def _sample_section(trained, run_dir: Path, report: _Report) -> str:
    existing = run_dir / "samples.png"
    if existing.is_file():
        return _img(existing, "sample grid", "Training images with their labels, as the model sees them.")
    files = trained.split("train", run_dir)
    path = report.figure_path("samples")
    plot_samples(files, path, trained.image_size, seed=trained.seed)
    return _img(path, "sample grid", "Training images with their labels, as the model sees them.")


def _augmentation_section(trained, result: evaluation.Evaluation, report: _Report, draws: int) -> str:
    description = describe_augmentation(trained.resolved.get("augmentation"))
    try:
        augmenter = trained.model.get_layer("augmentation")
    except ValueError:
        return f'<p class="note">No augmentation configured ({html.escape(description)}): the model sees the images as they are.</p>'
    path = report.figure_path("augmentation")
    plot_augmentation_preview(augmenter, data.load_image(result.paths[0], trained.image_size), path, draws,
                              description)
    return _img(path, "augmentation preview",
                f"The model's own augmentation block, called with training=True: {description}.")


def _calibration_section(trained, run_dir: Path) -> str:
    c = trained.calibration
    if not c:
        return '<p class="note">No calibration.json: this run predates calibrated confidence; confidences are unscaled.</p>'
    rows = [["temperature", _fmt(c["temperature"])], ["ECE before", _fmt(c["ece_before"])],
            ["ECE after", _fmt(c["ece_after"])], ["held-out images", str(c["images"])]]
    if trained.ood:
        rows.append(["unknown score", f"{trained.ood['method']}, threshold {_fmt(trained.ood['threshold'])} "
                                      f"(accepts {trained.ood['accept_rate']:.0%} of validation images)"])
    body = _table(["", ""], rows)
    figure = run_dir / "reliability.png"
    if figure.is_file():
        body += _img(figure, "reliability diagram", "Confidence against accuracy on the validation split, "
                     "before and after temperature scaling; the diagonal is perfect calibration.")
    return body


def _curves_section(trained, report: _Report) -> str:
    from transferkit.analysis.figures import plot_learning_curves

    if not trained.history:
        return '<p class="note">No training history recorded.</p>'
    path = report.figure_path("learning_curves")
    plot_learning_curves(trained.history, trained.fine_tune_start_epoch, path)
    stage2 = trained.fine_tune_start_epoch
    note = (f"Stage 1 trains the head on the frozen backbone; fine-tuning starts at epoch {stage2} (dashed line)."
            if stage2 else "Stage 1 only (head on the frozen backbone); no fine-tuning stage was run.")
    results = trained.results
    if results.get("best_epoch"):
        note += f" The weights kept are those of epoch {results['best_epoch']}, the lowest validation loss."
    if results.get("epochs_within_noise"):
        note += (f" {results['epochs_within_noise']} epochs scored within two standard errors of it on "
                 f"{results.get('val_images')} validation images: too few to tell them apart.")
    return _img(path, "learning curves", note)


def write_report(trained, run_dir=None, *, gradcam_images: int = GRADCAM_IMAGES,
                 draws: int = AUGMENTATION_DRAWS) -> Path:
    """Build `run_dir/report.html` for a trained (or reloaded) model; returns its path.

    Only report.html is written; figures are made in a scratch folder and embedded.
    """
    for name, value in (("gradcam_images", gradcam_images), ("draws", draws)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    run_dir = run_dir or trained.run_dir
    if not run_dir:
        raise ConfigError("No run directory given: pass the run folder the report belongs in.")
    run_dir = rundir.check_run_dir(run_dir)

    with tempfile.TemporaryDirectory(prefix="transferkit-report-") as scratch:
        report = _Report(Path(scratch))
        try:
            result = evaluation.evaluate_files(trained, trained.split("validation", run_dir),
                                               source="validation split")
            metrics, failure = result.metrics(), None
        except (TransferkitError, OSError) as error:  # the rest of the report is still worth having
            result, metrics, failure = None, None, error

        def validated(build):
            """A section that needs the validation predictions: it fails the way they did."""
            def run():
                if failure is not None:
                    raise failure
                return build()
            return run

        report.section("config", "Configuration", lambda: _config_section(trained))
        report.section("data", "Dataset", lambda: _data_section(trained))
        report.section("samples", "Sample images", lambda: _sample_section(trained, run_dir, report))
        report.section("augmentation", "Augmentation preview",
                       validated(lambda: _augmentation_section(trained, result, report, draws)))
        report.section("curves", "Learning curves", lambda: _curves_section(trained, report))
        report.section("metrics", "Validation metrics", validated(lambda: _metrics_section(result)))
        report.section("calibration", "Calibration", lambda: _calibration_section(trained, run_dir))

        def confusion():
            path = report.figure_path("confusion_matrix")
            evaluation.plot_confusion_matrix(
                metrics["confusion_matrix"], result.classes, path,
                f"Confusion matrix: {metrics['images']} validation images, accuracy {metrics['accuracy']:.1%}",
                rows=sorted(set(result.labels.tolist())))
            return _img(path, "confusion matrix", "Rows: true class; columns: predicted class. "
                        "Numbers are image counts, colour the fraction of the row.")

        report.section("confusion", "Confusion matrix", validated(confusion))
        report.section("misclassified", "Misclassified images", validated(lambda: _misclassified_section(result, report)))
        report.section("gradcam", "Grad-CAM", validated(lambda: _gradcam_section(trained, result, report, gradcam_images)))
        report.section("activations", "Activations", validated(lambda: _activations_section(trained, result, report)))
        page = _page(trained, run_dir, metrics, report.sections)
    path = run_dir / REPORT_FILE
    rundir.write_text(path, page)
    return path


def _page(trained, run_dir: Path, metrics: dict, sections) -> str:
    results, resolved = trained.results, trained.resolved
    title = f"transferkit run: {run_dir.resolve().name}"
    summary = (f"{trained.backbone} at {resolved.get('image_size', trained.image_size)} px, "
               f"{len(trained.classes)} classes")
    if metrics is not None:
        summary += f", validation accuracy {metrics['accuracy']:.1%} on {metrics['images']} images"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{key}">{html.escape(name)}</a>' for key, name, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{html.escape(name)}</h2>{content}</section>'
                   for key, name, content in sections)
    seconds = results.get("seconds")
    took = f"; training took {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(summary)}{html.escape(took)}. "
        f"Classes: {html.escape(', '.join(trained.classes))}. Report written {stamp} from "
        f"<code>{html.escape(str(run_dir))}</code>.</p></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )
