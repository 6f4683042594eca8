"""Outputs are checked before any work, written atomically, and kept when writing fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runs import ROOT, cli_error

from diffusion_pl.checkpoint_io import write_atomic
from diffusion_pl.cli import main
from diffusion_pl.cli.outputs import check_writable, json_writer, save_results

COMMANDS = {
    "sample": "sample --ckpt_path never-read.ckpt --num_samples 2",
    "reflow": "reflow --ckpt_path never-read.ckpt --num_pairs 2",
    "fid": "fid --ckpt_path never-read.ckpt --feature digits",
    "tune-grid": "tune-grid --ckpt_path never-read.ckpt --steps 2",
    "likelihood": "likelihood --ckpt_path never-read.ckpt",
    "phema": "phema --run . --sigma_rel 0.05",
    "encode": f"encode --config {ROOT / 'configs/digits/rectified_flow.yaml'} --autoencoder x",
    "lora": f"lora merge --ckpt_path never-read.ckpt --lora {ROOT / 'README.md'}",  # not read
    "autoencoder": "autoencoder export --ckpt_path never-read.ckpt",
}


@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
def test_an_output_under_a_file_is_refused_before_any_work(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint (never-read.ckpt), the run, the autoencoder are not looked at: the
    output is refused first, naming the option, the path and the file in the way."""
    blocker = tmp_path / "rf.npz"
    blocker.write_text("")
    output = blocker / "sub" / "s"
    expected = rf"^error: --output {output}(\.npz)?: {blocker} is a file, not a folder; choose"
    with cli_error(capsys, expected) as stderr:
        main([*command.split(), "--output", str(output)])
    assert len(stderr) == 1


def test_a_folder_that_cannot_be_created_or_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^--output /proc/nope/s\.npz: cannot write in /proc"):
        check_writable("output", "/proc/nope/s.npz")
    with pytest.raises(ValueError, match=r"it is a folder; give a file name"):
        check_writable("output", tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=r"/f: .*/f is a file, not a folder; choose another"):
        check_writable("output", tmp_path / "f", folder=True)
    assert check_writable("output", tmp_path / "new" / "dir", folder=True).is_dir()


def test_a_write_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")

    def fails_halfway(f) -> None:
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_atomic(target, fails_halfway)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    write_atomic(target, json_writer({"fid": 1.5}))
    assert json.loads(target.read_text()) == {"fid": 1.5}


def test_results_that_cannot_be_written_after_the_work_are_kept(tmp_path: Path) -> None:
    gone = tmp_path / "removed-after-the-check" / "fid.json"
    with pytest.raises(ValueError, match=r"^--output: could not write .*fid\.json \(No such") as e:
        save_results("output", {gone: json_writer({"fid": 2.5})})
    kept = Path(str(e.value).split("the results are kept in ")[1])
    try:
        assert kept.name.endswith("-fid.json") and json.loads(kept.read_text()) == {"fid": 2.5}
    finally:
        kept.unlink()
