"""unique-wasm.py SRC DST TAG: SRC with a custom section (id 0, name "wa8s-bench") holding TAG
appended: a valid component that behaves the same and has a digest never seen before (an
uncached start in the benchmarks)."""
import sys

src, dst, tag = sys.argv[1], sys.argv[2], sys.argv[3].encode()


def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


name = b"wa8s-bench"
payload = leb(len(name)) + name + tag
with open(src, "rb") as f:
    data = f.read()
with open(dst, "wb") as f:
    f.write(data + b"\x00" + leb(len(payload)) + payload)
