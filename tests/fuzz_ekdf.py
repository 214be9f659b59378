"""Seeded corruption fuzzing of the EKDF file format and of the decode op's arguments.

Run as a script -- ``tests/test_ekdf_corruption.py`` runs it in a subprocess, so that a crash is
a failed test rather than a dead pytest::

    python tests/fuzz_ekdf.py --files 2000 --ops 200 --seed 0

Every case must end in a clear error (DFloatError / ValueError / TypeError) or in a decode that is
bit-identical to the original tensor (values and shape), on the CPU decoder and on the CPU
emulation of the GPU decoder. Anything else is a failure: a decode that differs
("wrong"), an output value the decoder left unwritten ("unwritten": outputs are pre-filled with
two different sentinels in two runs), another exception type ("exception"), or a crash (the
subprocess dies). Prints one JSON line of counts; exit status 1 when any case failed.

Kinds of cases:

- files: a compressed tensor saved with ``save_file``, then damaged -- a header field set to
  another value or type, removed or added; a digit or character of the header JSON changed;
  bytes of the payload or of the safetensors header changed; an array shortened, lengthened,
  retyped or swapped; the file truncated or extended; two of these at once. A quarter of the
  files are in the format without ``header_crc32`` (written before it existed), loaded by
  verifying a decode; there a shape edited to another of the same size cannot be seen (nothing
  covers it) and is counted apart, as "legacy_reshaped". Loaded with ``validate=True``.
- unvalidated: the same damaged files loaded with ``validate=False``: wrong values are allowed
  (the caller opted out of the checks) but not crashes, other exception types or unwritten
  output values.
- ops: ``entropy_kernels::dfloat_decompress`` / ``_into`` with inconsistent arguments:
  ``numel``, ``total_bits``, ``max_block_values``, ``block_starts`` or ``gaps`` entries, arrays
  resized to match or not, on the meta device, of other dtypes or layouts, and bad ``out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from entropy_kernels import _backend
from entropy_kernels.decoding.dfloat import (
    DFloatError,
    DFloatTensor,
    load_file,
    to_safetensors,
)
from entropy_kernels.ops import dfloat as dfloat_ops

CLEAN_ERRORS = (DFloatError, ValueError, TypeError)
SENTINELS = (0x5A5A, 0x2323)  # never both a decoded value at the same position by accident


def emulated_gpu_decode(words, gaps, block_starts, lut, raw, numel, total_bits, max_block_values,
                        out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The CPU emulation of the GPU decoder (csrc/dfloat_block.h, thread by thread) into
    ``out`` (default: a fresh tensor); the arrays must pass ``ops.dfloat.check_payload``."""
    if out is None:
        out = torch.zeros(numel, dtype=torch.bfloat16)
    status = _backend.native().dfloat_decode_emulated(
        words.data_ptr(), words.numel(), block_starts.data_ptr(), block_starts.numel() - 1, gaps.data_ptr(),
        gaps.numel(), lut.data_ptr(), raw.data_ptr(), numel, total_bits, max_block_values, out.data_ptr(),
        out.numel())
    if status:
        raise ValueError(f"emulated decoder refused the arguments (status {status})")
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).cpu().view(torch.int16)


# ------------------------------------------------------------------------------------- inputs ---

def originals(seed: int) -> Dict[str, torch.Tensor]:
    """The tensors every case damages a copy of: one block, several blocks, every exponent (long
    codes), a few values, none."""
    g = torch.Generator().manual_seed(seed)
    every = torch.randint(-32768, 32768, (20_000,), generator=g, dtype=torch.int32).to(torch.int16)
    return {
        "one_block": (torch.randn(60, 50, generator=g) * 0.02).to(torch.bfloat16),
        "blocks": (torch.randn(350, 200, generator=g) * 0.02).to(torch.bfloat16),
        "every_exponent": every.view(torch.bfloat16).view(100, 200),
        "tiny": (torch.randn(7, generator=g)).to(torch.bfloat16),
        "empty": torch.zeros(0, 3, dtype=torch.bfloat16),
    }


def _serialize(flat: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(flat, metadata=metadata)


def encoded_file(x: torch.Tensor, legacy: bool) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(flat tensors, parsed EKDF metadata)`` of a file holding ``x`` under the key "tensor";
    ``legacy``: the header without ``header_crc32``, as files written before it existed."""
    flat, meta = to_safetensors({"tensor": DFloatTensor.compress(x)})
    info = json.loads(meta["ekdf"])
    if legacy:
        del info["tensors"]["tensor"]["header_crc32"]
    return flat, info


# ---------------------------------------------------------------------------- file mutations ---

def _value_mutation(rng: random.Random, v):
    """Another value for a JSON field: a nearby or far integer, another type, a special float."""
    choices: List[Callable] = [
        lambda: None, lambda: True, lambda: 1.5, lambda: float("inf"), lambda: float("nan"), lambda: "12",
        lambda: [], lambda: {}, lambda: -1, lambda: 0, lambda: 2**63, lambda: 10**30,
    ]
    if isinstance(v, int) and not isinstance(v, bool):
        choices += [lambda: v + 1, lambda: v - 1, lambda: v + rng.randint(-40, 40), lambda: v * 2,
                    lambda: v // 2, lambda: v ^ (1 << rng.randrange(32)), lambda: float(v)] * 3
    if isinstance(v, list):  # shape
        def edit_dim():
            if not v:
                return [rng.randint(0, 5)]
            w = list(v)
            i = rng.randrange(len(w))
            w[i] = rng.choice([w[i] + 1, w[i] - 1, 0, w[i] * 2, 1, -w[i], float(w[i]), str(w[i])])
            return w
        choices += [edit_dim] * 4 + [lambda: v + [1], lambda: v[:-1], lambda: list(reversed(v)),
                                     lambda: [v[0] * v[1] // 2, 2] if len(v) == 2 and v[1] % 2 == 0 and v[0] else v]
    if isinstance(v, dict):  # code_lengths, exponent_hist
        def edit_entry():
            w = dict(v)
            if not w:
                return {str(rng.randrange(256)): 1}
            k = rng.choice(sorted(w))
            w[k] = rng.choice([w[k] + 1, w[k] - 1, 0, -1, 13, w[k] * 2, str(w[k]), None])
            return w
        def move_entry():
            w = dict(v)
            if not w:
                return w
            k = rng.choice(sorted(w))
            w[str(rng.randrange(256))] = w.pop(k)
            return w
        def swap_entries():
            w = dict(v)
            if len(w) < 2:
                return w
            a, b = rng.sample(sorted(w), 2)
            w[a], w[b] = w[b], w[a]
            return w
        choices += [edit_entry] * 4 + [move_entry, swap_entries] * 2 + [
            lambda: {**v, "256": 1}, lambda: {**v, "-1": 1}, lambda: {**v, "01": 1}, lambda: {**v, "x": 1}]
    if isinstance(v, str):
        choices += [lambda: v.lower(), lambda: v + " ", lambda: ""]
    return rng.choice(choices)()


def mutate_file(rng: random.Random, flat: Dict[str, torch.Tensor], info: dict) -> Tuple[bytes, str]:
    """One damaged file (bytes) and a description of the damage."""
    flat = {k: v.clone() for k, v in flat.items()}
    info = json.loads(json.dumps(info))
    header = info["tensors"]["tensor"]
    kind = rng.choice(["field"] * 6 + ["top_field", "json_digit", "json_digit", "json_char", "payload_bytes",
                       "payload_bytes", "st_header_byte", "array_size", "array_dtype", "array_swap", "truncate",
                       "append", "two"])
    if kind == "two":
        data, a = mutate_file(rng, flat, info)
        return _mutate_bytes(rng, data) if rng.random() < 0.5 else (data[:rng.randrange(len(data) + 1)],
                                                                 f"{a}+truncate")
    desc = kind
    if kind == "field":
        key = rng.choice(sorted(header) + ["new_field"])
        if key == "new_field" or rng.random() < 0.06:
            if key == "new_field":
                header["note"] = 1
            else:
                del header[key]
            desc = f"field {key} removed/added"
        else:
            before = header[key]
            header[key] = _value_mutation(rng, before)
            desc = f"field {key}: {str(before)[:30]} -> {str(header[key])[:30]}"
    elif kind == "top_field":
        key = rng.choice(["magic", "version", "tensors"])
        info[key] = _value_mutation(rng, info[key]) if key != "tensors" else rng.choice([None, [], {}, 1])
        desc = f"top field {key}"
    elif kind == "array_size":
        part = rng.choice(sorted(flat))
        t = flat[part]
        k = rng.choice([1, 1, 2, 8, max(1, t.numel() // 2)])
        if rng.random() < 0.5 and t.numel():
            flat[part] = t[:max(0, t.numel() - k)].clone()
        else:
            flat[part] = torch.cat([t, torch.zeros(k, dtype=t.dtype)])
        desc = f"{part} resized by {k}"
    elif kind == "array_dtype":
        part = rng.choice(sorted(flat))
        t = flat[part]
        flat[part] = rng.choice([t.to(torch.int64), t.to(torch.float32), t.to(torch.int16), t.to(torch.uint8)])
        desc = f"{part} retyped to {flat[part].dtype}"
    elif kind == "array_swap":
        a, b = rng.sample(sorted(flat), 2)
        flat[a], flat[b] = flat[b], flat[a]
        desc = f"swap {a} {b}"
    text = json.dumps(info, allow_nan=True)
    if kind in ("json_digit", "json_char"):
        positions = [i for i, ch in enumerate(text) if ch.isdigit()] if kind == "json_digit" else list(range(len(text)))
        i = rng.choice(positions)
        new = rng.choice("0123456789") if kind == "json_digit" else chr(rng.randrange(32, 127))
        desc = f"{kind} at {i}: {text[i]!r} -> {new!r}"
        text = text[:i] + new + text[i + 1:]
    data = _serialize(flat, {"format": "pt", "ekdf": text})
    if kind in ("payload_bytes", "st_header_byte", "truncate", "append"):
        return _mutate_bytes(rng, data, kind)
    return data, desc


def _mutate_bytes(rng: random.Random, data: bytes, kind: Optional[str] = None) -> Tuple[bytes, str]:
    kind = kind or rng.choice(["payload_bytes", "st_header_byte", "truncate", "append"])
    buf = bytearray(data)
    head = 8 + struct.unpack("<Q", bytes(buf[:8]))[0] if len(buf) >= 8 else 0
    if kind == "payload_bytes" and len(buf) > head:
        for _ in range(rng.choice([1, 1, 2, 4])):
            i = rng.randrange(head, len(buf))
            buf[i] ^= rng.choice([1 << rng.randrange(8), rng.randrange(1, 256)])
        return bytes(buf), "payload bytes"
    if kind == "st_header_byte" and head > 8:
        i = rng.randrange(0, min(head, len(buf)))
        buf[i] = rng.choice([ord(c) for c in '0123456789{}[]",: a'] + [rng.randrange(256)])
        return bytes(buf), f"safetensors header byte {i}"
    if kind == "append":
        return bytes(buf) + bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 64]))), "append"
    return bytes(buf[:rng.randrange(len(buf) + 1)]), "truncate"


# ----------------------------------------------------------------------------------- running ---

class Tally:
    def __init__(self):
        self.counts: Dict[str, int] = {}
        self.failures: List[dict] = []

    def add(self, outcome: str, **info) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if outcome in ("wrong", "unwritten", "exception") and len(self.failures) < 20:
            self.failures.append({"outcome": outcome, **info})

    @property
    def failed(self) -> int:
        return sum(self.counts.get(k, 0) for k in ("wrong", "unwritten", "exception"))


def _emulated_all_written(payload, sizes) -> bool:
    """True when the emulated GPU decoder writes every output value (both sentinel runs)."""
    numel = sizes[0]
    unwritten = torch.ones(numel, dtype=torch.bool)
    for s in SENTINELS:
        out = torch.full((numel,), s, dtype=torch.int16).view(torch.bfloat16)
        emulated_gpu_decode(*payload, *sizes, out=out)
        unwritten &= bits(out) == s
    return not bool(unwritten.any())


def run_file_case(path: str, data: bytes, x: torch.Tensor, validate: bool, legacy: bool) -> str:
    with open(path, "wb") as f:
        f.write(data)
    try:
        loaded = load_file(path, validate=validate)
        c = loaded.get("tensor")
        if not isinstance(c, DFloatTensor):
            # the damage turned the payload into plain tensors: no EKDF tensor to decode
            return "error" if "tensor" not in loaded else "wrong"
        y = c.decompress()
    except CLEAN_ERRORS:
        return "error"
    if not _emulated_all_written(c.payload(), c.sizes()):
        return "unwritten"
    if not validate:
        return "decoded"  # any values: the caller opted out of the checks
    values = torch.equal(bits(y), bits(x)) and torch.equal(bits(emulated_gpu_decode(*c.payload(), *c.sizes())), bits(x))
    if values and tuple(y.shape) != tuple(x.shape) and legacy:
        # a header without header_crc32 has nothing that covers its shape: another shape of the
        # same size cannot be told from the original (docs/ekdf-integrity.md); counted apart
        return "legacy_reshaped"
    return "exact" if values and tuple(y.shape) == tuple(x.shape) else "wrong"


def fuzz_files(tally: Tally, cases: int, seed: int, validate: bool, xs: Dict[str, torch.Tensor]) -> None:
    rng = random.Random(seed)
    encoded = {(name, legacy): encoded_file(x, legacy) for name, x in xs.items() for legacy in (False, True)}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "case.safetensors")
        for case in range(cases):
            name = rng.choice(sorted(xs))
            legacy = rng.random() < 0.25
            data, desc = mutate_file(rng, *encoded[(name, legacy)])
            try:
                outcome = run_file_case(path, data, xs[name], validate, legacy)
            except Exception as exc:  # noqa: BLE001 - every other exception is a finding
                outcome, desc = "exception", f"{desc}: {type(exc).__name__}: {str(exc)[:200]}"
            tally.add(outcome, case=case, tensor=name, legacy=legacy, damage=desc)


def _op_case(rng: random.Random, c: DFloatTensor):
    """(description, args of dfloat_decompress) with one inconsistency."""
    words, gaps, starts, lut, raw = [t.clone() for t in c.payload()]
    numel, total_bits, mbv = c.sizes()

    def resized(t: torch.Tensor, n: int) -> torch.Tensor:
        n = max(0, n)
        return t[:n].clone() if n <= t.numel() else torch.cat([t, torch.zeros(n - t.numel(), dtype=t.dtype)])

    def fit(numel_, total_bits_):  # arrays sized for other numel / total_bits (values kept where they fit)
        sizes = dfloat_ops.payload_sizes(numel_, total_bits_)
        return (resized(words, sizes["words"]), resized(gaps, sizes["gaps"]),
                resized(starts, sizes["block_starts"]), lut, resized(raw, sizes["raw"]))

    kind = rng.choice(["numel", "numel_fit", "total_bits", "total_bits_fit", "both_fit", "block_starts",
                       "block_starts", "gaps", "max_block_values", "device", "dtype", "layout", "int_type",
                       "numel_fit_starts"])
    arrays = [words, gaps, starts, lut, raw]
    sizes = [numel, total_bits, mbv]
    k = rng.choice([1, 1, 2, 3, 8, 100, 5000])
    sign = rng.choice([-1, 1])
    if kind == "numel":
        sizes[0] = max(0, numel + sign * k)
    elif kind == "numel_fit":
        sizes[0] = max(0, numel + sign * k)
        arrays = list(fit(sizes[0], total_bits))
    elif kind == "numel_fit_starts":  # fewer values, the index's last entry moved along
        sizes[0] = max(0, numel - k)
        arrays = list(fit(sizes[0], total_bits))
        arrays[2][-1] = sizes[0]
        sizes[2] = min(mbv, sizes[0]) if sizes[0] else 0
    elif kind == "total_bits":
        sizes[1] = max(0, total_bits + sign * k)
    elif kind == "total_bits_fit":
        sizes[1] = max(0, total_bits + sign * rng.choice([1, 2, 5, 11, 31, 32, 300, 70000]))
        arrays = list(fit(numel, sizes[1]))
    elif kind == "both_fit":
        sizes[0], sizes[1] = max(0, numel + sign * k), max(0, total_bits + rng.choice([-1, 1]) * k * 3)
        arrays = list(fit(sizes[0], sizes[1]))
    elif kind == "block_starts" and starts.numel():
        i = rng.randrange(starts.numel())
        how = rng.choice(["set", "plus", "swap", "reverse"])
        if how == "set":
            starts[i] = rng.choice([-5, -1, 0, 1, numel - 1, numel, numel + 1, 2**40, rng.randint(0, numel)])
        elif how == "plus":
            starts[i] += rng.choice([-8, -1, 1, 8])
        elif how == "swap" and starts.numel() > 1:
            j = rng.randrange(starts.numel())
            starts[i], starts[j] = starts[j].clone(), starts[i].clone()
        else:
            arrays[2] = starts.flip(0).contiguous()
        kind = f"block_starts {how} [{i}]"
    elif kind == "gaps" and gaps.numel():
        i = rng.randrange(gaps.numel())
        gaps[i] ^= rng.choice([1, 2, 4, 8, 16, 0x80, 0xFF])
        kind = f"gaps [{i}]"
    elif kind == "max_block_values":
        sizes[2] = rng.choice([mbv - 1, mbv - k, mbv + 1, 0, numel, numel + 1, dfloat_ops.BLOCK_BITS + 1, -1])
    elif kind == "device":
        i = rng.randrange(5)
        if rng.random() < 0.2:
            arrays = [t.to("meta") for t in arrays]
            kind = "all on meta"
        else:
            arrays[i] = arrays[i].to("meta")
            kind = f"array {i} on meta"
    elif kind == "dtype":
        i = rng.randrange(5)
        arrays[i] = arrays[i].to(rng.choice([torch.int64, torch.int32, torch.uint8, torch.float32, torch.int16]))
        kind = f"array {i} as {arrays[i].dtype}"
    elif kind == "layout":
        i = rng.randrange(5)
        t = arrays[i]
        arrays[i] = rng.choice([torch.cat([t, t]).view(2, -1)[0] if t.numel() else t.view(1, 0),
                                t.repeat_interleave(2)[::2], t.view(1, -1)])
        kind = f"array {i} layout {tuple(arrays[i].shape)} contiguous={arrays[i].is_contiguous()}"
    elif kind == "int_type":
        i = rng.randrange(3)
        sizes[i] = rng.choice([True, float(sizes[i]), -1, 2**63, str(sizes[i])])
        kind = f"size {i} = {sizes[i]!r}"
    return kind, arrays, sizes


def run_op_case(arrays, sizes, x: torch.Tensor, via_ops: bool = True) -> str:
    """``via_ops``: through torch.ops (the dispatcher); else the Python entry point
    ``ops.dfloat.decompress`` (for argument types the dispatcher's schema check refuses first)."""
    if via_ops:
        ops = torch.ops.entropy_kernels
    else:
        class ops:  # noqa: N801 - the two ops' signatures over the Python entry point
            dfloat_decompress = staticmethod(dfloat_ops.decompress)

            @staticmethod
            def dfloat_decompress_into(out, *args):
                dfloat_ops.decompress(*args, out=out)
    expected = bits(x)
    numel = sizes[0]

    def judge(y: torch.Tensor) -> str:
        if y.device.type == "meta":  # every argument on meta: shapes only, no values
            return "error" if y.shape != (numel,) else "exact"
        if isinstance(numel, int) and numel <= expected.numel() and torch.equal(bits(y), expected[:numel]):
            return "exact"
        return "wrong"

    outcomes = []
    try:
        outcomes.append(judge(ops.dfloat_decompress(*arrays, *sizes)))
    except CLEAN_ERRORS:
        outcomes.append("error")
    # into a buffer pre-filled with sentinels: refused, or every value written and right
    if isinstance(numel, int) and not isinstance(numel, bool) and 0 <= numel <= 10**7:
        device = arrays[0].device if isinstance(arrays[0], torch.Tensor) else "cpu"
        for s in SENTINELS:
            out = torch.full((numel,), s, dtype=torch.int16, device=device).view(torch.bfloat16)
            try:
                ops.dfloat_decompress_into(out, *arrays, *sizes)
                outcomes.append(judge(out))
            except CLEAN_ERRORS:
                outcomes.append("error")
    # the GPU's algorithm (emulated): it cannot raise, so it must write every value
    try:
        dfloat_ops.check_payload(*arrays, *sizes)
        checked = arrays[0].device.type == "cpu"
    except CLEAN_ERRORS:
        checked = False
    if checked and not _emulated_all_written(arrays, sizes):
        return "unwritten"
    for bad in ("wrong", "exact"):
        if bad in outcomes and "error" in outcomes:
            return "wrong"  # refused one way, decoded the other: the checks differ by path
    return "wrong" if "wrong" in outcomes else outcomes[0]


def fuzz_ops(tally: Tally, cases: int, seed: int, xs: Dict[str, torch.Tensor]) -> None:
    rng = random.Random(seed + 1)
    compressed = {name: DFloatTensor.compress(x) for name, x in xs.items()}
    for case in range(cases):
        name = rng.choice(sorted(xs))
        kind, arrays, sizes = _op_case(rng, compressed[name])
        try:
            outcome = run_op_case(arrays, sizes, xs[name].reshape(-1), via_ops=not kind.startswith("size "))
        except Exception as exc:  # noqa: BLE001 - every other exception is a finding
            outcome, kind = "exception", f"{kind}: {type(exc).__name__}: {str(exc)[:200]}"
        tally.add(outcome, case=case, tensor=name, damage=kind)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=int(os.environ.get("EK_FUZZ_CASES", "300")),
                   help="damaged files loaded with validation (default: $EK_FUZZ_CASES or 300)")
    p.add_argument("--unvalidated", type=int, default=None, help="damaged files loaded with validate=False "
                   "(default: a third of --files)")
    p.add_argument("--ops", type=int, default=None, help="inconsistent op calls (default: a third of --files, >= 60)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    unvalidated = args.files // 3 if args.unvalidated is None else args.unvalidated
    op_cases = max(60, args.files // 3) if args.ops is None else args.ops
    xs = originals(args.seed)
    start = time.perf_counter()
    report = {}
    for label, run, n in (("files", lambda t: fuzz_files(t, args.files, args.seed, True, xs), args.files),
                          ("unvalidated", lambda t: fuzz_files(t, unvalidated, args.seed + 7, False, xs), unvalidated),
                          ("ops", lambda t: fuzz_ops(t, op_cases, args.seed, xs), op_cases)):
        tally = Tally()
        run(tally)
        report[label] = {"cases": n, "failed": tally.failed, "outcomes": tally.counts, "failures": tally.failures}
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return 1 if any(report[k]["failed"] for k in ("files", "unvalidated", "ops")) else 0


if __name__ == "__main__":
    sys.exit(main())
