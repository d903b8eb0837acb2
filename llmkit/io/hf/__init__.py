"""Hugging Face layouts: safetensors and torch ``.bin`` files, single or sharded with an index, peft
adapter folders; their reader (``source``), writer (``sink``: formats ``safetensors`` and ``bin``) and names.
"""
