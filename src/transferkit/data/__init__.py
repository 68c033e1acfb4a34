"""Data: the folder layout and its one walker, the dataset doctor's scan, splits, decoding, `tf.data`.

The names used across transferkit are re-exported here, so callers write `data.load_image`.
"""

from transferkit.data.files import (  # noqa: F401
    DEFAULT_MAX_PIXELS, IGNORED_NAMES, IMAGE_EXTENSIONS, SPLITS, TEST, TRAIN, VALIDATION, LabelledFiles,
    class_folders, evenly_spaced, expand_image_paths, file_digest, find_images, is_image_file, list_class_folders, resolve_layout,
    walk_files,
)
from transferkit.data.images import (  # noqa: F401
    PixelLimitError, decoded_batches, load_image, load_image_bytes, make_dataset,
)
from transferkit.data.split import split_key, stratified_split  # noqa: F401
