"""Hostile and careless input, run the way a user runs a stage: one command line each.

Every case asserts the exit code, a single ``error: <stage>:`` line with no traceback on
stderr, the fragment that names the problem, and that nothing changed: a victim
directory outside the workspace, and the workspace itself (its earlier outputs
included), are compared file by file before and after.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO, python_cmd, run, write_tiny_project

from pipeline.workspace import mark_model

# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: relative path -> content hash (or 'dir')."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def _save_keras(model, path: Path) -> None:
    model.save(path)


def _tiny_model(name_first="conv"):
    import keras

    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name=name_first),
            keras.layers.Flatten(name="flat"),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workspace with data, a model, earlier outputs of every stage and a victim outside.

    The earlier outputs are real kerascope files (written by the stages), so a case that
    wrongly deletes or overwrites them is caught.
    """
    base = tmp_path_factory.mktemp("hostile")
    ws = base / "ws"
    params, _, _ = write_tiny_project(ws, n=12)
    # Relative paths, as in the real params.yaml.
    params["paths"] = yaml.safe_load((REPO / "params.yaml").read_text())["paths"]
    params["attribute"]["methods"] = ["saliency", "gradcam"]
    params["attribute"]["sanity"]["enabled"] = False
    params["attribute"]["faithfulness"]["steps"] = 4
    params["maximize"]["steps"] = 4
    params["maximize"]["targets"] = [{"layer": "conv", "units": [0]}]
    params["render"]["dpi"] = 40
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    (ws / "conf").symlink_to(REPO / "conf")
    mark_model(ws / "outputs" / "model.keras")  # as the train stage would have saved it
    for stage in ("extract", "attribute", "maximize", "render"):
        run(python_cmd("-m", f"pipeline.stages.{stage}"), ws)
    (ws / "notes.txt").write_text("the user's notes\n")
    (ws / "mydata").mkdir()
    (ws / "mydata" / "keep.csv").write_text("a,b\n1,2\n")
    (ws / "outputs" / "userdir").mkdir()
    (ws / "outputs" / "userdir" / "mine.txt").write_text("mine\n")
    (ws / ".git").mkdir()
    (ws / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ws / ".dvc" / "cache").mkdir(parents=True)
    (ws / ".dvc" / "cache" / "blob").write_text("cached\n")
    victim = base / "victim"
    (victim / "sub").mkdir(parents=True)
    (victim / "precious.txt").write_text("do not delete\n")
    (victim / "sub" / "more.txt").write_text("nor this\n")
    _make_bad_inputs(base / "inputs")
    return base


def _png(path: Path, size=(8, 8), mode="L") -> None:
    from PIL import Image

    Image.new(mode, size, 128).save(path)


def _make_bad_inputs(folder: Path) -> None:
    """Hostile data files, made once."""
    folder.mkdir(parents=True)
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype("float32")
    np.savez(folder / "objects.npz", x=np.array([{"a": 1}] * 20, dtype=object), y=np.zeros(20))
    np.save(folder / "array.npy", x)
    np.savez(folder / "scalar.npz", x=np.float32(3.0), y=np.zeros(1))
    np.savez(folder / "negative.npz", x=x, y=np.r_[np.zeros(19), -3])
    np.savez(folder / "beyond.npz", x=x, y=np.arange(20) % 7)
    np.savez(folder / "fractional.npz", x=x, y=np.full(20, 0.5))
    np.savez(folder / "strings.npz", x=x, y=np.array(["cat", "dog"] * 10))
    np.savez(folder / "uint16.npz", x=(x * 65535).astype(np.uint16), y=np.arange(20) % 2)
    # Image folders: two classes of healthy images, and one problem each.
    for kind in ("corrupt", "truncated", "notimage", "bomb", "empty", "hidden", "sixteen"):
        root = folder / f"images_{kind}"
        for cls in ("a", "b"):
            (root / cls).mkdir(parents=True)
            for i in range(3):
                _png(root / cls / f"{i}.png")
        bad = root / "b" / "bad.png"
        if kind == "corrupt":
            data = (root / "a" / "0.png").read_bytes()
            bad.write_bytes(data[:40] + bytes(len(data) - 40))
        elif kind == "truncated":
            _png(bad, (64, 64))
            bad.write_bytes(bad.read_bytes()[:-60])
        elif kind == "notimage":
            bad.write_text("this is not a PNG\n")
        elif kind == "bomb":
            _decompression_bomb(bad)
        elif kind == "empty":
            (root / "c").mkdir()
            (root / "c" / "readme.txt").write_text("no images here\n")
        elif kind == "hidden":
            (root / ".ipynb_checkpoints").mkdir()
            _png(root / ".ipynb_checkpoints" / "0.png")
            _png(root / "a" / ".hidden.png")
        elif kind == "sixteen":
            from PIL import Image

            for cls in ("a", "b"):
                for i in range(3):
                    arr = np.full((8, 8), 60000, np.uint16)
                    Image.fromarray(arr).save(root / cls / f"{i}.png")
    # Model files that need code.
    _lambda_files(folder)
    _custom_class_file(folder / "custom.keras")
    _savedmodel_with_side_effect(folder / "savedmodel_payload", folder / "PWNED")
    (folder / "not_a_savedmodel").mkdir()
    (folder / "not_a_savedmodel" / "x.txt").write_text("x")
    (folder / "text.keras").write_text("not a zip archive\n")


def _decompression_bomb(path: Path) -> None:
    """A tiny PNG that claims 12,000 x 12,000 pixels (more than Pillow's safety limit)."""
    width = height = 12_000
    raw = b"".join(b"\x00" + bytes(width // 8) for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


LAMBDA_SCRIPT = """
import keras, sys
folder = sys.argv[1]
def evil(x):
    return x * 2
named = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(evil, name="lam"),
                          keras.layers.Flatten(), keras.layers.Dense(4)])
named.save(folder + "/named_lambda.h5")
marker = folder + "/LAMBDA_RAN"
payload = eval("lambda t: t + 0 * len(open(%r, 'w').name)" % marker)
code = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(payload, name="code"),
                         keras.layers.Flatten(), keras.layers.Dense(4)])
code.save(folder + "/bytecode_lambda.keras")
import os
os.remove(marker) if os.path.exists(marker) else None
"""


def _lambda_files(folder: Path) -> None:
    # In a subprocess: the function 'evil' must not be importable where the stage runs.
    run(python_cmd("-c", LAMBDA_SCRIPT, str(folder)), folder)


CUSTOM_SCRIPT = """
import keras, sys
@keras.saving.register_keras_serializable(package="my")
class MyLayer(keras.layers.Layer):
    def call(self, x):
        return x
model = keras.Sequential([keras.Input((8, 8, 1)), MyLayer(name="mine"), keras.layers.Flatten(),
                          keras.layers.Dense(4)])
model.save(sys.argv[1])
"""


def _custom_class_file(path: Path) -> None:
    run(python_cmd("-c", CUSTOM_SCRIPT, str(path)), path.parent)


SAVEDMODEL_SCRIPT = """
import sys, tensorflow as tf
target, marker = sys.argv[1], sys.argv[2]

class Payload(tf.saved_model.experimental.TrackableResource):
    # A resource whose initializer runs when the SavedModel is loaded: it writes a file.
    def _create_resource(self):
        return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[])
    def _initialize(self):
        tf.io.write_file(marker, "pwned")
        return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

class Module(tf.Module):
    def __init__(self):
        self.payload = Payload()
        self.w = tf.Variable(tf.ones([64, 4]))
    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32)])
    def serve(self, x):
        return {"out": tf.nn.softmax(tf.reshape(x, [-1, 64]) @ self.w)}

module = Module()
tf.saved_model.save(module, target, signatures={"serving_default": module.serve})
"""


def _savedmodel_with_side_effect(path: Path, marker: Path) -> None:
    run(python_cmd("-c", SAVEDMODEL_SCRIPT, str(path), str(marker)), path.parent)
    marker.unlink(missing_ok=True)


@pytest.fixture
def world(template, tmp_path):
    """A private copy of the template: (workspace, victim, inputs)."""
    dest = tmp_path / "world"
    shutil.copytree(template, dest, symlinks=True)
    return dest / "ws", dest / "victim", dest / "inputs"


def _stage(ws: Path, stage: str, args: list[str], env=None):
    module = "pipeline.compare" if stage == "compare" else f"pipeline.stages.{stage}"
    return run(python_cmd("-m", module, *args), ws, check=False, env=env)


def _edit_params(ws: Path, edit) -> None:
    path = ws / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params))


def _assert_one_line_error(proc, stage: str, fragment: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith(f"error: {stage}: "), lines[0]
    assert fragment in lines[0], lines[0]


# ----------------------------------------------------------------------------- cases

# (id, stage, args, fragment, setup). Arguments may name {ws}, {victim} and {inputs}.
# A setup function edits the workspace first (and is part of the "before" snapshot).
NPZ = ["data=npz"]
FOLDER = ["data=image_folder", "data.image_size=[8,8]", "data.color_mode=grayscale"]


def _yaml_broken(ws):
    (ws / "params.yaml").write_text("data:\n  name: [unclosed\n")


def _yaml_list(ws):
    (ws / "params.yaml").write_text("- just\n- a list\n")


def _paths_wrong_type(ws):
    _edit_params(ws, lambda p: p.__setitem__("paths", 3))


def _paths_missing_key(ws):
    _edit_params(ws, lambda p: p["paths"].pop("report"))


def _paths_extra_key(ws):
    _edit_params(ws, lambda p: p["paths"].__setitem__("backup", "outputs/backup"))


def _old_acts(ws):
    # A kerascope file of another kind (activations) where attributions would go.
    shutil.copy(ws / "outputs" / "activations.h5", ws / "outputs" / "old.h5")


def _link_outside(ws):
    (ws / "outputs" / "link").symlink_to(ws.parent / "victim")


CASES = [
    # --- data loss: paths outside the workspace or over other files
    ("abs-outside", "extract", ["paths.activations={victim}"], "outside the workspace", None),
    ("abs-outside-dir", "extract", ["paths.activations={victim}/sub"], "outside the", None),
    ("relative-parent", "render", ["paths.report=../victim"], "outside the workspace", None),
    ("parent-of-outputs", "extract", ["paths.activations=outputs"], "must not nest", None),
    ("workspace-root", "extract", ["paths.activations=."], "is the workspace itself", None),
    ("dotdot-root", "render", ["paths.report=outputs/.."], "is the workspace itself", None),
    ("git-dir", "render", ["paths.report=.git"], "inside '.git'", None),
    ("git-file", "extract", ["paths.activations=.git/HEAD"], "inside '.git'", None),
    ("dvc-cache", "render", ["paths.report=.dvc/cache"], "inside '.dvc'", None),
    ("same-as-other", "attribute", ["paths.attributions=outputs/activations.h5"], "same", None),
    ("symlink-outside", "render", ["paths.report=outputs/link"], "outside", _link_outside),
    ("metrics-outside", "extract", ["paths.metrics={victim}"], "outside the workspace", None),
    ("users-dir", "extract", ["paths.activations=mydata"], "never deleted or overwritten", None),
    (
        "users-file",
        "extract",
        ["paths.activations=notes.txt"],
        "never deleted or overwritten",
        None,
    ),
    (
        "users-subdir",
        "render",
        ["paths.report=outputs/userdir"],
        "never deleted or overwritten",
        None,
    ),
    (
        "conf-file",
        "maximize",
        ["paths.maximization=params.yaml"],
        "never deleted or overwritten",
        None,
    ),
    ("other-kind-output", "attribute", ["paths.attributions=outputs/old.h5"], "never", _old_acts),
    ("other-kind-file", "attribute", ["paths.attributions=outputs/model.keras"], "same", None),
    (
        "model-over-users-model",
        "train",
        ["model=pretrained", "model.path={ws}/outputs/model.keras"],
        "also paths.model",
        None,
    ),
    ("model-suffix", "train", ["paths.model=outputs/model.h5"], "must end with .keras", None),
    ("empty-path", "data", ["paths.dataset="], "invalid value", None),
    ("compare-out", "compare", ["--out", "{victim}/cmp", "main"], "not inside the workspace", None),
    # --- hand-edited params.yaml
    ("broken-yaml", "extract", [], "is not valid YAML", _yaml_broken),
    ("params-list", "render", [], "must be a mapping of config sections", _yaml_list),
    ("paths-wrong-type", "train", [], "'paths' must be a mapping", _paths_wrong_type),
    ("paths-missing-key", "render", [], "has no key 'report'", _paths_missing_key),
    ("paths-extra-key", "data", [], "unknown config key 'paths.backup'", _paths_extra_key),
    # --- model files that carry code
    (
        "savedmodel-safe-mode",
        "train",
        ["model=pretrained", "model.path={inputs}/savedmodel_payload"],
        "refusing to load SavedModel",
        None,
    ),
    (
        "custom-class",
        "train",
        ["model=pretrained", "model.path={inputs}/custom.keras"],
        "needs the custom class 'my>MyLayer'",
        None,
    ),
    (
        "h5-lambda-safe-mode",
        "train",
        ["model=pretrained", "model.path={inputs}/named_lambda.h5"],
        "calls function 'evil', which is not registered",
        None,
    ),
    (
        "h5-lambda-unregistered",
        "train",
        ["model=pretrained", "model.path={inputs}/named_lambda.h5", "model.safe_mode=false"],
        "calls function 'evil', which is not registered",
        None,
    ),
    (
        "keras-lambda-bytecode",
        "train",
        ["model=pretrained", "model.path={inputs}/bytecode_lambda.keras"],
        "safe_mode=false",
        None,
    ),
    (
        "custom-module-missing",
        "train",
        ["model=pretrained", "model.path={inputs}/custom.keras", "model.custom_modules=[nope]"],
        "cannot import model.custom_modules entry 'nope'",
        None,
    ),
    (
        "dir-not-savedmodel",
        "train",
        ["model=pretrained", "model.path={inputs}/not_a_savedmodel"],
        "not a SavedModel",
        None,
    ),
    (
        "text-as-keras",
        "train",
        ["model=pretrained", "model.path={inputs}/text.keras"],
        "not a .keras archive",
        None,
    ),
    # --- data files
    ("npz-objects", "data", [*NPZ, "data.path={inputs}/objects.npz"], "Python objects", None),
    ("npy-file", "data", [*NPZ, "data.path={inputs}/array.npy"], "is a .npy file", None),
    ("npz-0d", "data", [*NPZ, "data.path={inputs}/scalar.npz"], "(0-d)", None),
    ("npz-dir", "data", [*NPZ, "data.path={inputs}"], "is a directory", None),
    ("labels-negative", "data", [*NPZ, "data.path={inputs}/negative.npz"], "is negative", None),
    (
        "labels-beyond-names",
        "data",
        [*NPZ, "data.path={inputs}/beyond.npz", "data.class_names=[a,b,c]"],
        "is beyond the 3 data.class_names",
        None,
    ),
    (
        "labels-fractional",
        "data",
        [*NPZ, "data.path={inputs}/fractional.npz"],
        "not whole numbers",
        None,
    ),
    (
        "labels-unknown-name",
        "data",
        [*NPZ, "data.path={inputs}/strings.npz", "data.class_names=[cat,cow]"],
        "label 'dog'",
        None,
    ),
    ("png-corrupt", "data", [*FOLDER, "data.path={inputs}/images_corrupt"], "bad.png", None),
    ("png-truncated", "data", [*FOLDER, "data.path={inputs}/images_truncated"], "bad.png", None),
    ("png-not-image", "data", [*FOLDER, "data.path={inputs}/images_notimage"], "bad.png", None),
    ("png-bomb", "data", [*FOLDER, "data.path={inputs}/images_bomb"], "bad.png", None),
    ("class-empty", "data", [*FOLDER, "data.path={inputs}/images_empty"], "holds no images", None),
    (
        "image-size-zero",
        "data",
        ["data=image_folder", "data.image_size=[0,0]"],
        "'data.image_size' must be",
        None,
    ),
    (
        "image-size-negative",
        "data",
        ["data=image_folder", "data.image_size=[-4,8]"],
        "'data.image_size' must",
        None,
    ),
    (
        "image-size-huge",
        "data",
        ["data=image_folder", "data.image_size=[100000,8]"],
        "at most 4096",
        None,
    ),
    (
        "image-size-one",
        "data",
        ["data=image_folder", "data.image_size=[8]"],
        "[height, width]",
        None,
    ),
    ("test-fraction-zero", "data", ["data.test_fraction=0"], "leaves no test split", None),
    (
        "color-mode",
        "data",
        ["data=image_folder", "data.color_mode=cmyk"],
        "valid: rgb, grayscale",
        None,
    ),
    # --- stage settings
    ("dpi-huge", "render", ["render.dpi=100000"], "'render.dpi' must be at most 600", None),
    ("dpi-zero", "render", ["render.dpi=0"], "'render.dpi' must be a positive", None),
    ("max-channels-huge", "render", ["render.max_channels=10000000"], "at most", None),
    ("threshold-high", "attribute", ["attribute.sanity.threshold=1.5"], "in [0, 1]", None),
    ("threshold-negative", "attribute", ["attribute.sanity.threshold=-0.1"], "in [0, 1]", None),
    ("method-unknown", "attribute", ["attribute.methods=[limes]"], "valid: saliency", None),
    ("ig-steps-zero", "attribute", ["attribute.integrated_gradients.steps=0"], "steps", None),
    ("batch-zero", "extract", ["extract.batch_size=0"], "must be a positive number", None),
    ("strategy", "attribute", ["attribute.strategy=tpu"], "valid: auto", None),
    ("unknown-key", "maximize", ["maximize.stepz=3"], "did you mean 'maximize.steps'", None),
    ("bad-override", "train", ["train.epochs"], "key=value", None),
]


@pytest.mark.parametrize(
    ("stage", "args", "fragment", "setup"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_input_is_one_line_and_touches_nothing(
    template, world, stage, args, fragment, setup
):
    ws, victim, inputs = world
    if setup is not None:
        setup(ws)
    args = [a.format(ws=ws, victim=victim, inputs=inputs) for a in args]
    before_ws, before_victim = snapshot(ws), snapshot(victim)
    proc = _stage(ws, stage, args)
    _assert_one_line_error(proc, stage, fragment)
    assert snapshot(victim) == before_victim, "a file outside the workspace changed"
    after = snapshot(ws)
    assert after == before_ws, {
        k for k in before_ws.keys() | after.keys() if before_ws.get(k) != after.get(k)
    }
    # No code from a model file ran (the template's payload writes into the template).
    assert not (template / "inputs" / "PWNED").exists()
    assert not (inputs / "LAMBDA_RAN").exists()


def test_the_case_table_is_long_enough():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------ cases that must work


def _dataset(ws: Path) -> dict:
    with h5py.File(ws / "data" / "dataset.h5") as f:
        return {
            "classes": yaml.safe_load(f.attrs["class_names"]),
            "range": f.attrs["value_range"].tolist(),
            "n": sum(len(f[s]["y"]) for s in ("train", "val", "test")),
            "x": np.concatenate([f[s]["x"][()] for s in ("train", "val", "test")]),
            "skipped": f.attrs.get("skipped_files"),
        }


def test_string_labels_are_mapped_to_sorted_class_names(world):
    ws, _, inputs = world
    proc = _stage(ws, "data", [*NPZ, f"data.path={inputs}/strings.npz"])
    assert proc.returncode == 0, proc.stderr
    assert "string labels mapped to class indices in sorted order: cat=0, dog=1" in proc.stdout
    assert _dataset(ws)["classes"] == ["cat", "dog"]


def test_skip_bad_skips_and_lists_unreadable_images(world):
    ws, _, inputs = world
    folder = inputs / "images_corrupt"
    proc = _stage(ws, "data", [*FOLDER, f"data.path={folder}", "data.skip_bad=true"])
    assert proc.returncode == 0, proc.stderr
    assert f"skipped 1 unreadable image(s): {folder / 'b' / 'bad.png'}" in proc.stdout
    data = _dataset(ws)
    assert data["n"] == 6 and yaml.safe_load(data["skipped"]) == [str(folder / "b" / "bad.png")]


def test_hidden_entries_are_not_classes_or_images(world):
    ws, _, inputs = world
    proc = _stage(ws, "data", [*FOLDER, f"data.path={inputs}/images_hidden"])
    assert proc.returncode == 0, proc.stderr
    data = _dataset(ws)
    assert data["classes"] == ["a", "b"] and data["n"] == 6


def test_sixteen_bit_images_are_scaled_by_their_depth(world):
    ws, _, inputs = world
    assert _stage(ws, "data", [*FOLDER, f"data.path={inputs}/images_sixteen"]).returncode == 0
    data = _dataset(ws)
    np.testing.assert_allclose(data["x"], 60000 / 65535, rtol=1e-5)
    assert data["range"][1] <= 1.0
    proc = _stage(ws, "data", [*NPZ, f"data.path={inputs}/uint16.npz"])
    assert proc.returncode == 0, proc.stderr
    assert _dataset(ws)["range"][0] >= 0.0 and _dataset(ws)["range"][1] <= 1.0


def test_layers_named_dot_and_non_ascii_run_end_to_end(world):
    """A layer named '.' (HDF5 cannot name an object so) and one named 'α1' (TensorFlow
    refuses it as a scope name) go through train, extract and render."""
    import keras

    ws, _, _ = world
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(3, 3, activation="relu", name="α1"),
            keras.layers.Flatten(name="."),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )
    model.save(ws / "user.keras")
    proc = _stage(ws, "train", ["model=pretrained", f"model.path={ws / 'user.keras'}"])
    assert proc.returncode == 0, proc.stderr
    assert "renamed layers TensorFlow cannot use as scope names: 'α1' -> 'L_u3b1_1'" in proc.stdout
    assert _stage(ws, "extract", []).returncode == 0
    with h5py.File(ws / "outputs" / "activations.h5") as f:
        assert f["activations/%2E"].attrs["layer_path"] == "."
        assert "L_u3b1_1" in f["activations"]
    assert _stage(ws, "render", []).returncode == 0


def test_a_live_writer_is_never_disturbed(world):
    """While one process holds an output, a second is refused and its temporary survives."""
    ws, _, _ = world
    outputs = ws / "outputs"
    live_tmp = outputs / ".tmp-activations.h5-live.h5"
    live_tmp.write_bytes(b"being written")
    fd = os.open(outputs / ".kerascope-lock-activations.h5", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, 0)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        proc = _stage(ws, "extract", [])
    finally:
        os.close(fd)
    _assert_one_line_error(proc, "extract", "another kerascope process (pid 4242)")
    assert live_tmp.read_bytes() == b"being written"
    assert (outputs / "activations.h5").exists()
    # Once the lock is free, the next run clears the orphan and replaces the output.
    assert _stage(ws, "extract", []).returncode == 0
    assert not live_tmp.exists()


def test_savedmodel_payload_is_real_and_runs_only_when_safe_mode_is_off(world, tmp_path):
    ws, _, _ = world
    marker = tmp_path / "PWNED"
    path = tmp_path / "payload"
    _savedmodel_with_side_effect(path, marker)
    proc = _stage(ws, "train", ["model=pretrained", f"model.path={path}"])
    _assert_one_line_error(proc, "train", "model.safe_mode=false")
    assert not marker.exists()
    # The oracle: with safe_mode off, loading really runs the file's code.
    proc = _stage(ws, "train", ["model=pretrained", f"model.path={path}", "model.safe_mode=false"])
    assert marker.exists(), proc.stderr[-2000:]


def _small_disk(path: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` at ``path`` (needs root); False where that is impossible."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return proc.returncode == 0


def _fsize_limit(limit: int):
    """preexec_fn: files larger than ``limit`` bytes fail to write (EFBIG), like a full disk."""

    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("compression", ["none", "lzf"])
def test_disk_full_during_extract_is_one_line_and_recoverable(world, compression):
    """Without compression the size is known and refused before any work; with lzf the
    disk fills during the write. Either way: one line, no temporary, next run recovers."""
    ws, _, _ = world
    # 1,800 digits of 8x8: about 2 MB of activations for the tiny model.
    assert _stage(ws, "data", ["data=digits"]).returncode == 0
    outputs = ws / "outputs"
    disk = ws / "small"
    mounted = _small_disk(disk, "160k")
    try:
        args = [
            f"paths.activations={'small' if mounted else 'outputs'}/activations.h5",
            "extract.source=train",
            f"extract.compression={compression}",
        ]
        if mounted:
            proc = _stage(ws, "extract", args)
        else:  # no privilege to mount: a file-size limit gives the same write errors
            proc = subprocess.run(
                python_cmd("-m", "pipeline.stages.extract", *args),
                cwd=ws,
                capture_output=True,
                text=True,
                preexec_fn=_fsize_limit(150_000),
            )
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: extract: "), lines
        assert "activations.h5" in lines[0]
        assert ("needs about" in lines[0]) or ("no space left" in lines[0]), lines[0]
        target = disk if mounted else outputs
        assert not list(target.glob(".tmp-*")), list(target.glob(".tmp-*"))
        assert not (target / "activations.h5").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=False)
    # The next run, with room, recovers.
    assert _stage(ws, "extract", []).returncode == 0
    assert (outputs / "activations.h5").exists()


def test_figure_files_are_unique_per_layer_path(tmp_path):
    from pipeline.render.report import anchor

    names = ["a.b", "a-b", "a/b", "a_b", "a b", "a.b/c", "a-b/c"]
    stems = {anchor("act", n) for n in names}
    assert len(stems) == len(names)
    assert anchor("act", "base/dense") == "act-base-dense"  # readable where nothing is lost
