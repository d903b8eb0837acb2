"""MindSpore ``.ckpt``: the wire format and writer layout (``ckpt``), the lazy reader (``reader``), the
``ckpt`` sink, encrypted checkpoints (``keys``, ``crypto``) and MindFormers' parameter names (``mindformers``).
Read and written without MindSpore or protobuf.
"""
