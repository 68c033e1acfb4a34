"""Modeling: the backbone registry, augmentation layers, and the end-to-end classifier built from them."""
