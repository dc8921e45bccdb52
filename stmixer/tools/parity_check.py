"""Compare the parity tool's outputs with a reference fixture's answers.

    python -m stmixer.tools.parity_check --fixture DIR --outputs OUT.npz [--show N]

OUT.npz is what ``python -m stmixer.tools.reference_parity --fixture DIR --out
OUT.npz --precision f32|f64`` wrote; the precision is read from its keys. The
answers are ``DIR/expected.npz`` (see ``shared/reference/README.md``).

Checks, with the tolerances the fixture README derives from the official
code's own float32 spread:

* the key set, shapes and dtypes equal those of the answers for that
  precision (``.../full`` feature maps stand for the answers' ``.../sample``
  keys: the values at the flat indices ``index/...``);
* discrete outputs (selected queries, Hungarian matches, shapes, loss names)
  are identical — a float32 run selecting differently from float64 (a
  near-tie) is reported, not accepted;
* every float tensor is compared with the **float64** answer (answers that
  exist in float32 only, ``eval/mapped_l3_full``, with themselves): ``max|ours -
  f64| <= tol x max|f64|`` per tensor, tol = 1e-9 for float64 runs, 2e-4 for
  float32 runs, and 1e-2 for float32 train-mode outputs of fixtures whose
  train mode uses BatchNorm batch statistics (those that store ``train/``
  per-stage tensors: the SlowFast ones).

Prints the largest relative deviations and exits 0 when everything holds, 1
otherwise.
"""

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# max|ours - f64| / max|f64| allowed per tensor (shared/reference/README.md, "Tolerances").
TOLERANCE = {"f64": 1e-9, "f32": 2e-4}
# float32 train-mode outputs when BatchNorm uses the statistics of the 2-clip batch.
TOLERANCE_F32_BATCH_STATISTICS = 1e-2


@dataclass
class ParityResult:
    """Outcome of ``compare``: ``deviations`` maps each float key (without prefix) to
    ``(max|ours - f64|, max|f64|, tolerance)``; ``problems`` lists every failed check."""

    precision: str
    deviations: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def relative(self, key):
        """max|ours - f64| / max|f64| of ``key`` (0 for an all-zero answer that we match)."""
        err, scale, _ = self.deviations[key]
        return err / scale if scale else (np.inf if err else 0.0)

    def worst(self, n=10):
        """The ``n`` keys with the largest relative deviation, largest first."""
        return sorted(self.deviations, key=self.relative, reverse=True)[:n]


def sampled_outputs(outputs, expected):
    """``outputs`` with every ``<prefix>/.../<level>/full`` map replaced by ``.../<level>/sample``: its
    values at the flat indices ``expected["index/<level>"]``."""
    out = {}
    for key, value in outputs.items():
        if key.endswith("/full"):
            base = key[: -len("/full")]
            index = expected.get(f"index/{base.rsplit('/', 1)[1]}")
            if index is not None:
                out[f"{base}/sample"] = value.reshape(-1)[index]
                continue
        out[key] = value
    return out


def output_precision(outputs):
    """The precision prefix ("f32" or "f64") shared by every key of ``outputs``."""
    prefixes = {key.split("/", 1)[0] for key in outputs}
    if len(prefixes) != 1 or not prefixes <= set(TOLERANCE):
        raise ValueError(f"outputs must all start with one of {sorted(TOLERANCE)}/; found prefixes {sorted(prefixes)}")
    return prefixes.pop()


def tolerance(name, precision, expected):
    """Allowed max|ours - f64| / max|f64| for output ``name`` (without prefix)."""
    if precision == "f32" and name.startswith("train/") and "f64/train/cls_logits" in expected:
        return TOLERANCE_F32_BATCH_STATISTICS
    return TOLERANCE[precision]


def compare(outputs, expected):
    """Check the parity tool's ``outputs`` against a fixture's ``expected`` arrays (both ``{key: array}``).

    Returns a ``ParityResult``; see the module docstring for what is checked.
    """
    precision = output_precision(outputs)
    prefix = f"{precision}/"
    result = ParityResult(precision)
    ours = sampled_outputs(outputs, expected)
    wanted = {k for k in expected if k.startswith(prefix)}
    for key in sorted(wanted - set(ours)):
        result.problems.append(f"{key}: missing from the outputs")
    for key in sorted(set(ours) - wanted):
        result.problems.append(f"{key}: not among the answers")
    for key in sorted(wanted & set(ours)):
        got, want = ours[key], expected[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            result.problems.append(f"{key}: shape {got.shape} {got.dtype}, expected {want.shape} {want.dtype}")
            continue
        if want.dtype.kind in "iuU":
            if not np.array_equal(got, want):
                near_tie = " (float32 differs from float64 here: a near-tie?)" if precision == "f32" else ""
                result.problems.append(f"{key}: {got.tolist()} != expected {want.tolist()}{near_tie}")
            continue
        name = key[len(prefix):]
        reference = expected.get("f64/" + name, want)  # f32-only answers (mapped_l3_full): against themselves
        if not reference.size:
            continue
        err = float(np.abs(got.astype(np.float64) - reference).max())
        scale = float(np.abs(reference).max())
        tol = tolerance(name, precision, expected)
        result.deviations[name] = (err, scale, tol)
        if not err <= tol * scale:
            result.problems.append(f"{key}: max|ours - f64| = {err:.3e} > {tol:g} x max|f64| = {tol * scale:.3e}")
    return result


def main(argv=None):
    """Command-line entry point; returns the exit status (0 parity holds, 1 it does not, 2 bad input)."""
    parser = argparse.ArgumentParser(prog="python -m stmixer.tools.parity_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--fixture", required=True, type=Path, help="fixture folder holding expected.npz")
    parser.add_argument("--outputs", required=True, type=Path, help="npz written by stmixer.tools.reference_parity")
    parser.add_argument("--show", type=int, default=10, help="how many of the largest deviations to print")
    args = parser.parse_args(argv)
    try:
        with np.load(args.fixture / "expected.npz") as data:
            expected = dict(data)
        with np.load(args.outputs) as data:
            outputs = dict(data)
        result = compare(outputs, expected)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.outputs} vs {args.fixture}/expected.npz ({result.precision} run, float tensors against f64/):")
    for key in result.worst(args.show):
        err, scale, tol = result.deviations[key]
        print(f"  {result.relative(key):.2e} x max|f64|  (tolerance {tol:g})  {key}")
    for problem in result.problems:
        print(f"FAIL {problem}")
    print("parity holds" if result.ok else f"{len(result.problems)} checks failed")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
