"""The frontends: the .mtl language (parser, lowering, formatter) and the Caffe importer."""

from pathlib import Path

# The built-in task heads, read before every model: messages and generated code name this file
# by its place in the package, as a model's own files are named by theirs.
PRELUDE = Path(__file__).with_name("heads.mtl")
