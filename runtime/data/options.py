"""The options (`[data]` in a config, keywords of `open_dataset`) each kind of dataset takes.
Torch-free, so that a config's misspelt option is refused where the file sets it."""

from __future__ import annotations

# every kind of dataset takes these (taken out of the options before `_check_options`)
EVERY_KIND_OPTIONS = ("tasks", "augment", "scales", "flip")
COMMON_OPTIONS = (*EVERY_KIND_OPTIONS, "size")
SHAPES_RENDER_OPTIONS = ("objects", "seed", "n_train", "n_val", "n_test", "cache_dir")
CITYSCAPES_OPTIONS = (*COMMON_OPTIONS, "classes")
# what some kind takes: any other name is a mistake whatever the data
ANY_KIND_OPTIONS = tuple(sorted({*COMMON_OPTIONS, *SHAPES_RENDER_OPTIONS, *CITYSCAPES_OPTIONS}))
