"""Readers for what a run writes, shared by the CLI tests: metrics JSONL and safetensors."""
import json
import struct
from pathlib import Path


def metrics(path: Path):
    """The entries of a metrics.jsonl file, in order."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def safetensors_tensors(path: Path):
    """name -> raw bytes of every tensor (metadata excluded: it may carry times)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    return {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items() if k != "__metadata__"}
