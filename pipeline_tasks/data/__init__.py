"""Image data: listing, manifests, near copies, validation, splits, decoding, the cache, importers."""
