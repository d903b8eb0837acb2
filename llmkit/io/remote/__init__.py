"""Remote inputs: a model on the hub (``hf://owner/name[@revision][/path]``) or in S3 (``s3://bucket/prefix``)
read as a tensor source, front to back, without a local copy (``url``, ``store``, ``reader``, ``source``)."""
