"""The ONNX step function (export/onnx_export.h) run by onnxruntime, chunk by chunk.

tests/export/onnx_reference (REHYAT_ONNX_REFERENCE) writes tiny causal ReHyAt DiTs as ONNX
step models with latents, timestep, context and rehyat's own outputs (recurrent_forward and
the parallel causal forward). Here onnxruntime runs each model over the video one chunk at
a time, feeding each chunk's new state into the next, and the velocities must match
rehyat's to f32 accuracy. Further checks: the state really carries information (zeroing
S, z or the kept frames changes later chunks), and the first chunk ignores whatever state
it is given, NaN included (frames before 0 are masked in the graph).

Without REHYAT_ONNX_REFERENCE (rehyat built without ONNX export) the module skips with a
message; with it, a missing onnxruntime is an error (tests/requirements.txt installs it).
"""
import json
import os
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

REFERENCE_BIN = os.environ.get("REHYAT_ONNX_REFERENCE")
if not REFERENCE_BIN:
    pytest.skip("rehyat was built without ONNX export (REHYAT_ONNX off: libonnx-dev / libprotobuf-dev not found); "
                "the ONNX step-function tests do not run", allow_module_level=True)

try:
    import onnxruntime as ort
except ImportError as error:  # fail loudly: the export is built, so its runtime test must run
    raise ImportError("rehyat was built with ONNX export but onnxruntime is missing: "
                      "pip install -r tests/requirements.txt") from error

CASES = ["tc2_to1", "tc2_to3_short", "tc1_to0_pt2"]
RTOL = 1e-4  # max |onnx - rehyat| / max |rehyat|, f32 through two different runtimes


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    run = subprocess.run([REFERENCE_BIN, str(out)], capture_output=True, text=True)
    assert run.returncode == 0, f"onnx_reference failed:\n{run.stdout}\n{run.stderr}"
    return out


class Step:
    """One exported model, its reference data and a chunk-by-chunk runner."""

    def __init__(self, folder):
        self.session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        self.reference = load_file(str(folder / "reference.safetensors"))
        with open(folder / "reference.safetensors", "rb") as f:  # the header's metadata
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        self.chunk = int(header["__metadata__"]["chunk_latent_frames"])
        self.state_inputs = [i for i in self.session.get_inputs() if i.name.startswith("blocks.")]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def zero_state(self, batch):
        return {i.name: np.zeros([batch if isinstance(d, str) else d for d in i.shape], np.float32)
                for i in self.state_inputs}

    def run_chunk(self, first, state):
        r = self.reference
        feeds = {"latents": np.ascontiguousarray(r["latents"][:, :, first:first + self.chunk]),
                 "timestep": r["timestep"], "context": r["context"],
                 "frame_offset": np.array(first, dtype=np.int64), **state}
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        new_state = {name: outputs["new_" + name] for name in state}
        return outputs["velocity"], new_state

    def run_video(self, edit_state=None):
        """Velocity of the whole video; edit_state(first, state) may alter the state fed to a chunk."""
        frames = self.reference["latents"].shape[2]
        state = self.zero_state(self.reference["latents"].shape[0])
        velocities = []
        for first in range(0, frames, self.chunk):
            if edit_state:
                state = edit_state(first, state)
            velocity, state = self.run_chunk(first, state)
            velocities.append(velocity)
        return np.concatenate(velocities, axis=2)


def rel_error(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    assert np.all(np.isfinite(got))
    return float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("case", CASES)
def test_onnx_step_matches_recurrent_forward(reference_dir, case):
    step = Step(reference_dir / case)
    velocity = step.run_video()
    want = step.reference["velocity_recurrent"]
    assert np.max(np.abs(want)) > 0.1  # a live head: the comparison means something
    err = rel_error(velocity, want)
    err_parallel = rel_error(velocity, step.reference["velocity_parallel"])
    print(f"{case}: {want.shape[2]} frames in chunks of {step.chunk}: max error {err:.2e} vs recurrent_forward, "
          f"{err_parallel:.2e} vs the parallel causal forward")
    assert err <= RTOL, f"{case}: ONNX step vs recurrent_forward: {err:.3e} > {RTOL}"
    assert err_parallel <= RTOL, f"{case}: ONNX step vs parallel forward: {err_parallel:.3e} > {RTOL}"


@pytest.mark.parametrize("case", CASES)
def test_state_carries_the_earlier_chunks(reference_dir, case):
    """Zeroing part of the state before the last chunk changes it by far more than the tolerance."""
    step = Step(reference_dir / case)
    want = step.reference["velocity_recurrent"]
    frames = want.shape[2]
    last = (frames - 1) // step.chunk * step.chunk
    parts = [("S and z", lambda name: name.endswith((".S", ".z")))]
    if any(name.endswith("kept_k") for name in step.zero_state(1)):
        parts.append(("kept frames", lambda name: name.endswith(("kept_k", "kept_v"))))
    for what, selected in parts:
        def zero_before_last(first, state):
            return {n: (np.zeros_like(v) if first == last and selected(n) else v) for n, v in state.items()}
        changed = rel_error(step.run_video(zero_before_last)[:, :, last:], want[:, :, last:])
        print(f"{case}: zeroing {what} before the last chunk changes it by {changed:.2e}")
        assert changed > 100 * RTOL, f"{case}: zeroing {what} before the last chunk changed it by only {changed:.2e}"


@pytest.mark.parametrize("case", CASES)
def test_first_chunk_ignores_its_input_state(reference_dir, case):
    """At frame_offset 0 there is nothing before: random or NaN S, z and kept frames change nothing."""
    step = Step(reference_dir / case)
    batch = step.reference["latents"].shape[0]
    rng = np.random.default_rng(3)
    clean, clean_state = step.run_chunk(0, step.zero_state(batch))
    for what, garbage in [("random", lambda shape: rng.normal(size=shape).astype(np.float32) * 5),
                          ("NaN", lambda shape: np.full(shape, np.nan, np.float32))]:
        state = {n: garbage(v.shape) for n, v in step.zero_state(batch).items()}
        noisy, noisy_state = step.run_chunk(0, state)
        np.testing.assert_array_equal(noisy, clean, err_msg=f"{case}: {what} state at frame 0")
        for name in clean_state:
            if name.endswith((".S", ".z")):
                np.testing.assert_array_equal(noisy_state[name], clean_state[name], err_msg=f"{case}: {what} {name}")
