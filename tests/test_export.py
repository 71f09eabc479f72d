"""`a2net export`: a torch.export program that a fresh process loads with PyTorch alone and that
gives the eager model's theta (within 1e-5, two batch sizes, affine and affine+TPS, one plain pass
and composed symmetric passes); the inference options it holds (given, else the checkpoint's; never
the refinement) and says it holds; the graph holds aten ops on the CPU path and the a2net custom
ops on the Triton path; `a2net export`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from a2net import TwoStageAligner, cli
from a2net.checkpoint import load_model
from a2net.export import export_aligner, graph_ops, program_info
from a2net.inference import predict_chain
from a2net.model import normalize_images
from tests.helpers import DEVICE
from tests.test_cli_errors import assert_error, run_cases
from tests.test_evaluate import save_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SIZE = (112, 112)

# Loads programs and runs each on its saved inputs, in a process that has not imported a2net
# (unless asked to register the custom ops); writes the outputs.
RUNNER = r"""
import sys
import torch
if sys.argv[1] == "ops":
    import a2net.ops
outputs = []
for program, inputs in torch.load(sys.argv[2]):
    module = torch.export.load(program).module()
    outputs.append([module(source, target) for source, target in inputs])
torch.save(outputs, sys.argv[3])
print("a2net imported:", any(name.split(".")[0] == "a2net" for name in sys.modules))
"""


def run_exported(tmp_path: Path, jobs: list, register_ops: bool = False) -> tuple[list, str]:
    """Run ``[(program path, [(source, target), ...]), ...]`` in a fresh process."""
    torch.save([(str(program), inputs) for program, inputs in jobs], tmp_path / "jobs.pt")
    process = subprocess.run(
        [sys.executable, "-c", RUNNER, "ops" if register_ops else "plain", str(tmp_path / "jobs.pt")]
        + [str(tmp_path / "outputs.pt")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    return torch.load(tmp_path / "outputs.pt"), process.stdout


def images(batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.rand(batch, 3, *SIZE, generator=generator, device="cpu") for _ in range(2))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return save_tiny_checkpoint(root / "affine", "affine"), save_tiny_checkpoint(root / "tps", "tps")


def test_cpu_programs_match_the_eager_models_in_a_fresh_process(tmp_path, checkpoints):
    """An affine model at batch sizes 1 and 5, affine+TPS (both thetas) at 2 and 3, loaded by a
    process that only has PyTorch."""
    model = load_model(checkpoints[0]).eval()
    program = export_aligner(model, tmp_path / "affine.pt2")
    assert not [op for op in graph_ops(program) if op.startswith("a2net.")]  # the PyTorch reference: aten only
    assert any(p.requires_grad for p in model.parameters())  # the export froze a copy, not the model
    with pytest.raises(Exception, match="Guard failed"):  # another size than the exported one
        program.module()(torch.rand(1, 3, 128, 112), torch.rand(1, 3, 128, 112))
    aligner = TwoStageAligner(model, load_model(checkpoints[1])).eval()
    export_aligner(aligner, tmp_path / "two.pt2")
    # the inference options traced in: two composed passes, each the symmetric estimate
    export_aligner(model, tmp_path / "affine-2s.pt2", iterations=2, symmetric=True)
    export_aligner(aligner, tmp_path / "two-2s.pt2", iterations=2, symmetric=True)
    assert program_info(tmp_path / "two-2s.pt2") == {
        "mode": "affine+tps",
        "image_size": list(SIZE),
        "inference": {"iterations": 2, "symmetric": True},
    }
    jobs = [
        (tmp_path / "affine.pt2", [images(1, 0), images(5, 1)]),
        (tmp_path / "two.pt2", [images(2, 2), images(3, 3)]),
        (tmp_path / "affine-2s.pt2", [images(1, 5), images(3, 6)]),
        (tmp_path / "two-2s.pt2", [images(2, 7)]),
    ]
    (affine, two, affine_2s, two_2s), printed = run_exported(tmp_path, jobs)
    assert "a2net imported: False" in printed
    for (source, target), theta in zip(jobs[2][1], affine_2s, strict=True):
        with torch.no_grad():
            [eager] = predict_chain(model, normalize_images(source), normalize_images(target), 2, symmetric=True)
            plain = model(normalize_images(source), normalize_images(target))
        torch.testing.assert_close(theta, eager, atol=1e-5, rtol=0)
        assert (theta - plain).abs().max() > 1e-4  # the passes are in the graph, not one plain pass
    [(source, target)], [(theta_affine, theta_tps)] = jobs[3][1], two_2s
    with torch.no_grad():
        eager_tps, eager_affine = predict_chain(aligner, normalize_images(source), normalize_images(target), 2, True)
    torch.testing.assert_close(theta_affine, eager_affine, atol=1e-5, rtol=0)
    torch.testing.assert_close(theta_tps, eager_tps, atol=1e-5, rtol=0)
    for (source, target), theta in zip(jobs[0][1], affine, strict=True):
        with torch.no_grad():
            eager = model(normalize_images(source), normalize_images(target))
        assert theta.shape == eager.shape == (source.shape[0], 6) and not theta.requires_grad
        torch.testing.assert_close(theta, eager, atol=1e-5, rtol=0)
    for (source, target), (theta_affine, theta_tps) in zip(jobs[1][1], two, strict=True):
        with torch.no_grad():
            eager_affine, eager_tps = aligner(normalize_images(source), normalize_images(target))
        torch.testing.assert_close(theta_affine, eager_affine, atol=1e-5, rtol=0)
        torch.testing.assert_close(theta_tps, eager_tps, atol=1e-5, rtol=0)


def test_exported_options_default_to_the_checkpoints(tmp_path, checkpoints):
    """Options not given come from the checkpoint (as ``a2net align`` takes them), the refinement
    is never exported, a TPS model makes one plain pass, and bad options are refused."""
    model = load_model(checkpoints[0]).eval()
    model.checkpoint_state = {"inference": {"iterations": 3, "symmetric": True, "refine": True}}
    export_aligner(model, tmp_path / "stored.pt2")
    assert program_info(tmp_path / "stored.pt2")["inference"] == {"iterations": 3, "symmetric": True}
    export_aligner(model, tmp_path / "given.pt2", symmetric=False)
    assert program_info(tmp_path / "given.pt2")["inference"] == {"iterations": 3, "symmetric": False}
    export_aligner(load_model(checkpoints[1]), tmp_path / "tps.pt2", iterations=4)
    assert program_info(tmp_path / "tps.pt2") == {
        "mode": "tps",
        "image_size": list(SIZE),
        "inference": {"iterations": 1, "symmetric": False},
    }
    with pytest.raises(ValueError, match="iterations: expected an int >= 1, got 0"):
        export_aligner(model, iterations=0)


def test_triton_path_keeps_the_custom_ops(tmp_path, checkpoints, triton_backend):
    """What a CUDA export holds (on CPU seen with the kernels in the interpreter): the fused
    correlation+OAC and the attention pooling stay as a2net custom ops (no correlation tiles kept
    for a backward pass); the file loads once ``a2net.ops`` registers them."""
    model = load_model(checkpoints[0]).eval().to(DEVICE)
    program = export_aligner(model, tmp_path / "triton.pt2")
    ops = graph_ops(program)
    assert ops["a2net.correlation_oac.default"] == 1 and ops["a2net.attention_pool.default"] == 1
    node = next(n for n in program.graph.nodes if str(n.target) == "a2net.correlation_oac.default")
    assert node.args[-1] is False  # save_correlation: nothing kept for a backward pass
    # two composed symmetric passes: one call of each op per pass (both directions in one batch)
    ops = graph_ops(export_aligner(model, tmp_path / "triton-2s.pt2", iterations=2, symmetric=True))
    assert ops["a2net.correlation_oac.default"] == 2 and ops["a2net.attention_pool.default"] == 2
    source, target = (x.to(DEVICE) for x in images(2, 4))
    jobs = [(tmp_path / "triton.pt2", [(source, target)]), (tmp_path / "triton-2s.pt2", [(source, target)])]
    [[theta], [theta_2s]], _ = run_exported(tmp_path, jobs, register_ops=True)
    with torch.no_grad():
        eager = model(normalize_images(source), normalize_images(target))
        [eager_2s] = predict_chain(model, normalize_images(source), normalize_images(target), 2, symmetric=True)
    torch.testing.assert_close(theta, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(theta_2s, eager_2s, atol=1e-5, rtol=0)


def test_export_command(tmp_path, checkpoints, capsys):
    out = tmp_path / "models" / "affine.pt2"
    assert cli.main(["export", "--checkpoint", str(checkpoints[0]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inputs: source, target: (B, 3, 112, 112) float32 RGB in [0, 1] on cpu" in printed
    assert "a2net custom ops: none" in printed and out.is_file()
    assert "inference: one pass (" in printed  # the tiny checkpoint names no options: the paper's one pass
    argv = ["export", "--checkpoint", str(checkpoints[0]), "--out", str(out), "--iterations", "2", "--symmetric"]
    assert cli.main(argv) == 0
    assert "inference: 2 composed passes, each the symmetric estimate" in capsys.readouterr().out
    assert program_info(out)["inference"] == {"iterations": 2, "symmetric": True}  # replaced atomically
    assert not [p for p in out.parent.iterdir() if p.name != "affine.pt2"]  # written atomically, no temp file
    cases = [
        (["export", "--out", tmp_path / "x.onnx"], 2, "--out", ".pt2"),
        (["export", "--out", tmp_path / "x.pt2", "--device", "cuda"], 2, "--device", "CUDA"),
        (["export", "--out", tmp_path / "x.pt2", "--image-size", "64", "64"], 2, "--image-size", "7x7"),
        (["export", "--out", tmp_path / "x.pt2", "--checkpoint", tmp_path / "none"], 1, "no checkpoint"),
        (["export", "--out", tmp_path / "x.pt2", "--affine-checkpoint", checkpoints[0]], 1, "tps_checkpoint"),
        (["export", "--out", tmp_path / "x.pt2", "--checkpoint", checkpoints[1], "--iterations", "2"], 2, "TPS model"),
        (["export", "--out", tmp_path / "x.pt2", "--iterations", "0"], 2, "--iterations"),
        (["export", "--out", tmp_path / "x.pt2", "--refine"], 2, "--refine"),
    ]
    if torch.cuda.is_available():
        cases.pop(1)
    results = run_cases(tmp_path, [case[0] for case in cases])
    for (argv, code, *words), result in zip(cases, results, strict=True):
        try:
            assert_error(result, code, *words)
        except AssertionError as err:
            raise AssertionError(f"{argv}: {err}") from None
    assert not (tmp_path / "x.pt2").exists()


def test_export_help_imports_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from a2net.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['export', '--help'])\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code == 0\n"
        "print(json.dumps('torch' in sys.modules))\n"
    )
    process = subprocess.run(
        [sys.executable, "-c", "import json\n" + code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout) is False
