"""Find files whose class folder looks wrong (confident learning, Northcutt et al. 2021).

Every image gets out-of-fold predicted probabilities: k-fold logistic regression on
the frozen backbone's pooled features (one backbone pass per image, seconds per fold),
so no image is judged by a model that saw its label. cleanlab then flags the images
whose given label the out-of-fold model disbelieves beyond the class-pair noise
rates it estimates, ranked by self-confidence (the probability of the given label).
Nothing in the data folder is ever moved or written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferkit import data
from transferkit.errors import ConfigError, DataError
from transferkit.runs import folder as rundir
from transferkit.settings import Settings

logger = logging.getLogger("transferkit")

DEFAULT_FOLDS = 5
GALLERY_LIMIT = 24


@dataclass
class Suspect:
    path: str
    given: str
    suggested: str
    score: float  # 1 - out-of-fold probability of the given class: higher = more suspicious

    def to_dict(self) -> dict:
        return {"path": self.path, "given": self.given, "suggested": self.suggested, "score": round(self.score, 6)}


@dataclass
class AuditResult:
    classes: list[str]
    paths: list[str]
    labels: np.ndarray
    probabilities: np.ndarray  # out-of-fold, (n, n_classes)
    suspects: list[Suspect]
    unreadable: list[str]

    def to_dict(self) -> dict:
        return {"images": len(self.paths), "classes": self.classes, "unreadable": self.unreadable,
                "out_of_fold_accuracy": float(np.mean(self.probabilities.argmax(1) == self.labels)),
                "suspects": [s.to_dict() for s in self.suspects]}


def pooled_features(paths, backbone: str, image_size: int | None, weights_dir=None, batch_size: int = 32):
    """(features (n, d) float32, readable mask) from the frozen ImageNet backbone, globally pooled."""
    import keras

    from transferkit.modeling.classifier import build_classifier

    resolved = Settings(backbone=backbone, image_size=image_size, weights_dir=weights_dir, augment="none").resolve()
    model = build_classifier(resolved.spec, 2, resolved.image_size, weights_dir=weights_dir, augmentation=None)
    extractor = keras.Model(model.inputs, model.get_layer("pool").output)
    features = np.zeros((len(paths), int(extractor.output.shape[-1])), np.float32)
    readable = np.zeros(len(paths), bool)
    row = 0
    for images, ok in data.make_dataset(list(paths), None, resolved.image_size, batch_size, drop_unreadable=False):
        count = int(images.shape[0])
        features[row:row + count] = np.asarray(extractor.predict_on_batch(images))
        readable[row:row + count] = ok.numpy()
        row += count
    return features, readable


def out_of_fold_probabilities(features, labels, folds: int, seed: int = 42) -> np.ndarray:
    """(n, c) probabilities, each row from a logistic regression fitted without that image."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    classes = np.unique(labels)
    probabilities = np.zeros((len(labels), len(classes)))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        model = LogisticRegression(C=10.0, max_iter=2000).fit(x[train], labels[train])
        probabilities[np.ix_(test, np.searchsorted(classes, model.classes_))] = model.predict_proba(x[test])
    return probabilities


def audit_folder(data_dir, backbone: str = "mobilenet_v2", image_size: int | None = None, weights_dir=None,
                 folds: int = DEFAULT_FOLDS, seed: int = 42) -> AuditResult:
    """Suspected mislabelled files of a class-per-folder dataset, most suspicious first."""
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError as error:
        raise ConfigError("`transferkit audit` needs cleanlab: pip install 'transferkit[audit]'.") from error

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"folds must be a whole number >= 2, got {folds!r}.")
    files = data.list_class_folders(data_dir)
    small = {name: n for name, n in files.class_counts().items() if n < folds}
    if small:
        raise DataError(
            f"Class(es) {small} have fewer images than --folds {folds}: every fold needs one image of each class. "
            f"Use --folds {max(2, min(files.class_counts().values()))} or add images."
        )
    features, readable = pooled_features(files.paths, backbone, image_size, weights_dir)
    paths = [p for p, ok in zip(files.paths, readable) if ok]
    unreadable = [p for p, ok in zip(files.paths, readable) if not ok]
    labels = np.asarray(files.labels, int)[readable]
    probabilities = out_of_fold_probabilities(features[readable], labels, folds, seed)
    ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    suspects = [Suspect(paths[i], files.classes[labels[i]], files.classes[int(probabilities[i].argmax())],
                        float(1.0 - quality[i])) for i in ranked]
    return AuditResult(list(files.classes), paths, labels, probabilities, suspects, unreadable)


def write_audit(result: AuditResult, out_dir, image_size: int = 160) -> dict:
    """suspects.csv (every flagged file) and suspects.png (the first GALLERY_LIMIT) in `out_dir`."""
    from transferkit.analysis.figures import plot_image_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "suspects.csv", out_dir / "suspects.png"
    rundir.write_csv(csv_path, [s.to_dict() for s in result.suspects], ["path", "given", "suggested", "score"])
    written = {"csv": str(csv_path)}
    shown = result.suspects[:GALLERY_LIMIT]
    if shown:
        plot_image_grid([data.load_image(s.path, image_size) for s in shown],
                        [f"{Path(s.path).name}: {s.given} -> {s.suggested} ({s.score:.2f})" for s in shown], png_path)
        written["gallery"] = str(png_path)
    return written
