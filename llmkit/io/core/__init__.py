"""What every format shares: tensor specs, the source and sink protocols and their registries, the safe
sharded writer, all-or-nothing staging and destination rules, and the checked readers of small files.

Nothing here knows a file format's names; the format families (``llmkit.io.hf``, ``.meta``, ``.mindspore``)
build on this package and register themselves (``formats.py``).
"""
