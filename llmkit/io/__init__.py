"""The only code that knows file formats: tensor sources (readers) and the sharded writer."""

from llmkit.io.sinks import DEFAULT_SHARD_SIZE, ShardedWriter, TensorSpec, parse_size
from llmkit.io.sources import TensorInfo, TensorSource, open_source

__all__ = ["DEFAULT_SHARD_SIZE", "ShardedWriter", "TensorInfo", "TensorSource", "TensorSpec", "open_source",
           "parse_size"]
