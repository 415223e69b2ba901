"""The config loader every command uses (iif_d2.engine.config_files.load_config_file): plain YAML
only, _BASE_ local, inside the config's folder or the project's configs, acyclic, never a web
address; and train_net.py's one-line errors for settings it cannot run."""

import importlib.util
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from iif_d2.engine.config_files import RunConfigError, check_config_tree, load_config_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is empty"),
        ("# only a comment\n", "is empty"),
        ("- MODEL\n- SOLVER\n", "holds a YAML list, not a mapping"),
        ("just words\n", "holds a YAML str, not a mapping"),
        ("SOLVER: {BASE_LR: [\n", "line 2"),
        ("SOLVER:\n  NO_SUCH_KEY: 1\n", "NO_SUCH_KEY"),
        ("SOLVER:\n  MAX_ITER: ten\n", "MAX_ITER"),
        ("SOLVER: [1, 2]\n", "SOLVER is a YAML list; it is a section of keys"),
        ("MODEL:\n  ROI_HEADS: 3\n", "MODEL.ROI_HEADS is a YAML int"),
        ("_BASE_: ''\n", "_BASE_ is empty"),
        ("MODEL:\n  PIXEL_MEAN: &a [1.0, *a]\n", "expands to more than"),
        (
            "MODEL:\n  PIXEL_MEAN:\n    - &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)),
            "expands to more than 100000 values",
        ),
    ],
)
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(RunConfigError) as e:
        load_config_file(_write(tmp_path, "c.yaml", text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_python_tag_runs_no_code(tmp_path):
    sentinel = tmp_path / "sentinel"
    path = _write(tmp_path, "c.yaml", f"X: !!python/object/apply:os.mkdir ['{sentinel}']\n")
    with pytest.raises(RunConfigError, match="constructor for the tag .*python/object/apply"):
        load_config_file(path)
    assert not sentinel.exists()


def test_base_cycle(tmp_path):
    a = _write(tmp_path, "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path, "b.yaml", "_BASE_: sub/../a.yaml\nSOLVER: {MAX_ITER: 3}\n")
    with pytest.raises(RunConfigError, match=r"_BASE_ cycle .*a.yaml -> b.yaml -> a.yaml"):
        load_config_file(a)
    selfish = _write(tmp_path, "self.yaml", "_BASE_: self.yaml\n")
    with pytest.raises(RunConfigError, match="_BASE_ cycle"):
        load_config_file(selfish)


def test_base_outside_the_config_folder_and_the_project(tmp_path):
    _write(tmp_path, "elsewhere/base.yaml", "SOLVER: {MAX_ITER: 3}\n")
    leaf = _write(tmp_path, "mine/leaf.yaml", "_BASE_: ../elsewhere/base.yaml\n")
    with pytest.raises(RunConfigError, match="outside the config's folder"):
        load_config_file(leaf)
    absolute = _write(tmp_path, "mine/abs.yaml", "_BASE_: /etc/hostname\n")
    with pytest.raises(RunConfigError, match="outside the config's folder"):
        load_config_file(absolute)
    # inside: the config's folder, and the project's configs (by absolute path)
    _write(tmp_path, "mine/sub/base.yaml", "SOLVER: {MAX_ITER: 3}\n")
    ok = _write(tmp_path, "mine/ok.yaml", "_BASE_: sub/base.yaml\nSOLVER: {BASE_LR: 0.5}\n")
    cfg = load_config_file(ok, ["SOLVER.WARMUP_ITERS", "7"])
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, cfg.SOLVER.WARMUP_ITERS) == (3, 0.5, 7)
    project = os.path.join(REPO, "configs", "quick_schedules", "Base-instant.yaml")
    if os.path.isfile(project):
        check_config_tree(_write(tmp_path, "mine/p.yaml", f"_BASE_: {project}\n"))


class _Counter(BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"SOLVER: {MAX_ITER: 3}\n")

    def log_message(self, *args):
        pass


def test_web_addresses_are_never_fetched(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = HTTPServer(("127.0.0.1", port), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}/base.yaml"
        leaf = _write(tmp_path, "leaf.yaml", f"_BASE_: {url}\n")
        with pytest.raises(RunConfigError, match="never fetched"):
            load_config_file(leaf)
        listed = _write(tmp_path, "listed.yaml", f"_BASE_: [{url}]\n")
        with pytest.raises(RunConfigError, match="never fetched"):
            load_config_file(listed)
        with pytest.raises(RunConfigError, match="never fetched from the web"):
            load_config_file(url)
    finally:
        server.shutdown()
    assert _Counter.hits == 0


def _train_net():
    spec = importlib.util.spec_from_file_location("train_net", os.path.join(REPO, "train_net.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-gpus", "0"], "--num-gpus 0: give at least 1"),
        (["--num-machines", "2", "--machine-rank", "2"], "the rank of this machine is 0 to 1"),
        (["--machine-rank", "-1"], "the rank of this machine is 0 to 0"),
        (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD 0 must be an integer >= 1"),
        (["SOLVER.CHECKPOINTS_KEPT", "-1"], "SOLVER.CHECKPOINTS_KEPT -1 must be >= 0"),
        (["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:99999"], "port must be 1 to 65535"),
        (["--num-gpus", "2", "--dist-url", "file:///no/such/dir/f"], "/no/such/dir does not"),
        (["DATASETS.TRAIN", "('a',)", "SOLVER.GAMMA", "-1.0"], "SOLVER.GAMMA -1.0 must be > 0"),
        (["DATASETS.TRAIN", "('a',)", "SOLVER.MOMENTUM", "1.5"], "MOMENTUM 1.5 must be in [0, 1)"),
        (["MODEL.RPN.NMS_THRESH", "-0.5"], "MODEL.RPN.NMS_THRESH -0.5 must be between 0 and 1"),
        (["SOLVER.MAX_ITER", str(10**30)], "must be between 0 and 2147483647"),
        (["SEED", str(2**64)], "must be -1 (a random seed) or 0 to 2**32 - 1"),
        (["DATASETS.TRAIN", "('a', 'a')"], "DATASETS.TRAIN names a twice"),
        (["--eval-only", "DATASETS.TEST", "()"], "--eval-only has nothing to evaluate"),
        (["--eval-only", "TEST.DETECTIONS_PER_IMAGE", "0"], "DETECTIONS_PER_IMAGE 0 must be"),
    ],
)
def test_train_net_settings_it_cannot_run_are_one_line_errors(tmp_path, capsys, argv, message):
    config = _write(tmp_path, "c.yaml", "MODEL: {DEVICE: cpu}\n")
    assert _train_net().run(["--config-file", config, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == ["c.yaml"]


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_inf_anywhere_in_a_config_are_refused(tmp_path, value):
    from iif_d2.engine.config_files import check_run_config

    text = f"MODEL: {{DEVICE: cpu}}\nSOLVER: {{WARMUP_FACTOR: {value}}}\nOUTPUT_DIR: {tmp_path}\n"
    cfg = load_config_file(_write(tmp_path, "c.yaml", text))
    with pytest.raises(RunConfigError, match="SOLVER.WARMUP_FACTOR .* must be finite"):
        check_run_config(cfg, training=False)


def test_config_of_the_run_folder_is_not_replaced(tmp_path, capsys):
    """A run whose --config-file is OUTPUT_DIR/config.yaml would replace the user's file with
    its full dump: refused (a resumed run rewrites its own dump, as detectron2 does)."""
    text = "MODEL: {DEVICE: cpu}\nDATASETS:\n  TRAIN: ('iif_synthetic_tiny_train',)\n"
    config = _write(tmp_path, "run/config.yaml", text)
    argv = ["--config-file", config, "OUTPUT_DIR", str(tmp_path / "run")]
    assert _train_net().run(argv) == 2
    assert "is OUTPUT_DIR's config.yaml" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_text() == text


def test_ctrl_c_is_one_line(tmp_path, capsys):
    """Ctrl-C (as the command checks its input, sets up or trains): one line saying how to
    continue, exit status 130."""
    from helpers import ctrl_c_in

    config = _write(tmp_path, "c.yaml", "MODEL: {DEVICE: cpu}\n")
    with ctrl_c_in("check_launch_args"):
        assert _train_net().run(["--config-file", config]) == 130
    err = capsys.readouterr().err
    assert err == "interrupted: a training run continues from its last checkpoint with --resume.\n"


@pytest.mark.parametrize("key", ["SOLVER.EPOCH_SCHEDULE", "MODEL.ROI_BOX_HEAD.IIF", "MODEL"])
def test_an_override_of_a_whole_section_names_its_keys(tmp_path, key):
    """``SOLVER.EPOCH_SCHEDULE ()``: a section given one value is one line naming the section's
    keys, not yacs's type mismatch of two node reprs; a key inside it is a value as before."""
    ok = _write(tmp_path, "c.yaml", "SOLVER:\n  BASE_LR: 0.01\n")
    with pytest.raises(RunConfigError) as e:
        load_config_file(ok, [key, "()"])
    text = str(e.value)
    assert "\n" not in text and f"{key} is a section, not a value" in text
    assert f"e.g. {key}." in text
    cfg = load_config_file(ok, ["SOLVER.EPOCH_SCHEDULE.EPOCHS", "3"])
    assert cfg.SOLVER.EPOCH_SCHEDULE.EPOCHS == 3


def test_a_value_of_the_wrong_type_says_what_the_key_takes(tmp_path):
    """yacs's type mismatch (two class reprs and two values) said as the key's type and the
    config's value, in a file and in an override."""
    ok = _write(tmp_path, "c.yaml", "SOLVER:\n  BASE_LR: 0.01\n")
    with pytest.raises(RunConfigError) as e:
        load_config_file(ok, ["SOLVER.BASE_LR", "fast"])
    assert str(e.value) == (
        "config overrides: SOLVER.BASE_LR takes a value of type float, as the config's 0.01; "
        "fast is a str."
    )
    bad = _write(tmp_path, "b.yaml", "SOLVER:\n  MAX_ITER: many\n")
    with pytest.raises(RunConfigError, match=r"SOLVER.MAX_ITER takes a value of type int, as"):
        load_config_file(bad)
