"""The machine's own limits, measured in the same run as a benchmark so every
figure can be read as a share of them: sequential writes with one fdatasync at
the end, writes with an fdatasync per 16 KiB, and one TCP stream over loopback.

Usage: python3 bench/limits.py SCRATCH_DIR
"""
import os
import socket
import sys
import threading
import time


def disk(path, sync_each, total):
    chunk = b"x" * 16384
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY)
    start = time.perf_counter()
    for _ in range(total // len(chunk)):
        os.write(fd, chunk)
        if sync_each:
            os.fdatasync(fd)
    os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    os.unlink(path)
    return total / elapsed / 1e6


def loopback(total=1 << 30):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def sink():
        conn, _ = server.accept()
        while conn.recv(1 << 20):
            pass

    thread = threading.Thread(target=sink)
    thread.start()
    client = socket.create_connection(("127.0.0.1", port))
    block = b"x" * (1 << 20)
    start = time.perf_counter()
    for _ in range(total // len(block)):
        client.sendall(block)
    client.close()
    thread.join()
    server.close()
    return total / (time.perf_counter() - start) / 1e6


if __name__ == "__main__":
    probe = os.path.join(sys.argv[1], "disk-probe.bin")
    print(
        f"Machine in the same run: sequential write + one fdatasync {disk(probe, False, 256 << 20):,.0f} MB/s; "
        f"fdatasync per 16 KiB {disk(probe, True, 32 << 20):,.0f} MB/s; "
        f"loopback TCP stream {loopback():,.0f} MB/s"
    )
