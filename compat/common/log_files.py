"""Reading a partition's segment files as the broker wrote them, for the
checks a client cannot make (what compaction left of the transaction
markers: a client never sees a control batch)."""

from __future__ import annotations

from pathlib import Path

# RecordBatch v2 header: [base offset:8][length:4][leader epoch:4][magic:1]
# [crc:4][attributes:2][last offset delta:4][base timestamp:8]
# [max timestamp:8][producer id:8][producer epoch:2][base sequence:4]
# [records count:4]
HEADER_SIZE = 61
CONTROL = 0x20


def markers(data_dir: Path, topic: str, partition: int = 0) -> tuple[int, int]:
    """(markers, emptied markers): the control batches of the partition's
    segment files under `data_dir` holding their record, and those
    compaction emptied. A batch cut short at the tail is not counted."""
    (directory,) = [p for p in Path(data_dir).rglob(f"{topic}-{partition}") if p.is_dir()]
    held = emptied = 0
    for segment in sorted(directory.glob("*.log")):
        data = segment.read_bytes()
        position = 0
        while position + HEADER_SIZE <= len(data):
            size = 12 + int.from_bytes(data[position + 8:position + 12], "big")
            if position + size > len(data):
                break
            attributes = int.from_bytes(data[position + 21:position + 23], "big")
            count = int.from_bytes(data[position + 57:position + 61], "big")
            if attributes & CONTROL:
                if count:
                    held += 1
                else:
                    emptied += 1
            position += size
    return held, emptied
