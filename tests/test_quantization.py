"""int8 quantization: tiny conv graphs from onnx.helper, the gate, atomic writes, the real model."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from cross_pictures import cli, quantization
from cross_pictures.preprocessing import prepare_image
from cross_pictures.quantization import (
    DEFAULT_MIN_AGREEMENT,
    VIEWS_PER_IMAGE,
    Agreement,
    AgreementTooLowError,
    QuantizationError,
    TensorReader,
    compare,
    extra_views,
    prepare_all,
    prepare_views,
    quantize_model,
    read_images,
    shipped_images,
)
from tests.conftest import INT8_MODEL_PATH, require_model, require_photos
from tests.images import PHOTOS, encode, pattern, smooth_photo

MAX_PIXELS = 50_000_000
# Two small photos (14 views) keep the tiny-graph tests fast; the tiny graph needs no more.
FEW_PHOTOS = 2
FEW = FEW_PHOTOS * VIEWS_PER_IMAGE


def photo_folder(directory: Path, count: int = FEW_PHOTOS, *, seed: int = 0) -> Path:
    """`count` photo-like PNGs (different content per seed) in a new folder."""
    directory.mkdir()
    for i in range(count):
        (directory / f"{i}.png").write_bytes(
            encode(smooth_photo((320, 240), seed * 100 + i), "PNG")
        )
    return directory


def tiny_conv_model(path: Path, *, classes: int = 4, rigged: bool = False) -> Path:
    """[N,3,224,224] -> conv 4x4/4 -> relu -> global pool -> 1x1 conv -> [N, classes].

    `rigged`: every class has the same weights and the classes differ only by a bias step far
    below int8 resolution, so fp32 always picks the last class and int8 sees a tie (class 0).
    fp32 is never confident then (4 classes at ~25% each), so the gate counts every image.
    """
    rng = np.random.default_rng(0)
    conv1 = rng.normal(0.0, 0.3, size=(8, 3, 4, 4)).astype(np.float32)
    head = rng.normal(0.0, 0.3, size=(classes, 8, 1, 1)).astype(np.float32)
    bias = np.zeros(classes, np.float32)
    if rigged:
        head[:] = np.abs(head[0])
        bias = np.arange(classes, dtype=np.float32) * np.float32(1e-5)
    nodes = [
        helper.make_node("Conv", ["data", "w1", "b1"], ["c1"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["pooled"]),
        helper.make_node("Conv", ["pooled", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
        helper.make_node("Flatten", ["c2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-conv",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [
            numpy_helper.from_array(conv1, "w1"),
            numpy_helper.from_array(rng.normal(0, 0.1, size=8).astype(np.float32), "b1"),
            numpy_helper.from_array(head, "w2"),
            numpy_helper.from_array(bias, "b2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture
def fp32_model(tmp_path: Path) -> Path:
    return tiny_conv_model(tmp_path / "tiny.onnx")


@pytest.fixture
def few(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small calibration folder, outside tmp_path so tests can list tmp_path exactly."""
    return photo_folder(tmp_path_factory.mktemp("calibration") / "photos")


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- the quantized graph -------------------------------------------------------------------------


def test_quantizes_a_conv_graph_to_qdq_u8s8_per_channel(
    tmp_path: Path, fp32_model: Path, few: Path
) -> None:
    out = tmp_path / "out" / "tiny.int8.onnx"
    report = quantize_model(
        fp32_path=fp32_model, int8_path=out, calibration_dir=few, min_agreement=0.5
    )
    assert report.written
    assert report.int8_path == out
    assert report.calibration_images == FEW
    assert report.agreement.images == FEW
    assert report.int8_bytes == out.stat().st_size
    graph = onnx.load(str(out)).graph
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops
    assert "DequantizeLinear" in ops
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    quantize_zero_points = [
        initializers[node.input[2]] for node in graph.node if node.op_type == "QuantizeLinear"
    ]
    assert quantize_zero_points
    assert all(zp.dtype == np.uint8 for zp in quantize_zero_points)  # U8 activations
    weights = [
        node
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers  # a weight, not an activation's QuantizeLinear output
        and initializers[node.input[0]].dtype == np.int8
    ]
    assert len(weights) == 2  # S8 weights, one per Conv
    for node in weights:
        channels = initializers[node.input[0]].shape[0]
        assert initializers[node.input[1]].shape == (channels,)  # one scale per output channel
    # The model still classifies like the fp32 one on the images it was calibrated on.
    assert report.agreement.rate >= 0.5


def test_output_is_deterministic(tmp_path: Path, fp32_model: Path, few: Path) -> None:
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    for out in (first, second):
        quantize_model(fp32_path=fp32_model, int8_path=out, calibration_dir=few, min_agreement=0)
    assert first.read_bytes() == second.read_bytes()


def test_report_reads_well(tmp_path: Path, fp32_model: Path, few: Path) -> None:
    report = quantize_model(
        fp32_path=fp32_model, int8_path=tmp_path / "q.onnx", calibration_dir=few, min_agreement=0
    )
    text = str(report)
    assert text.startswith(f"wrote {tmp_path / 'q.onnx'}")
    assert (
        f"calibrated on: {FEW} views (each image, its mirror, 5 crops) of 2 images from {few}"
        in text
    )
    assert f"evaluated on:  {FEW} calibration views (in-sample: no --eval folder given)" in text
    assert "IN-SAMPLE" in text
    assert "top-1 agreement with fp32:" in text
    assert "top-1 agreement, all images:" in text
    assert "threshold 0.0%" in text
    assert "MiB" in text
    assert " s\n" in text


# -- the gate and the atomic write ---------------------------------------------------------------


def test_gate_refuses_a_model_that_disagrees_and_writes_nothing(tmp_path: Path, few: Path) -> None:
    fp32 = tiny_conv_model(tmp_path / "rigged.onnx", classes=4, rigged=True)
    dest = tmp_path / "models" / "rigged.int8.onnx"
    dest.parent.mkdir()
    with pytest.raises(AgreementTooLowError) as caught:
        quantize_model(fp32_path=fp32, int8_path=dest, calibration_dir=few, min_agreement=0.95)
    report = caught.value.report
    assert not report.written
    assert report.agreement.gated_rate < 0.95
    message = str(caught.value)
    assert f"{report.agreement.gated_rate:.1%}" in message
    assert "threshold 95.0%" in message
    assert "refusing to write" in message
    assert "did NOT write" in str(report)
    assert entries(dest.parent) == []  # no model, no temporary file


def test_refusal_keeps_the_previous_model(tmp_path: Path, few: Path) -> None:
    fp32 = tiny_conv_model(tmp_path / "rigged.onnx", classes=4, rigged=True)
    dest = tmp_path / "previous.int8.onnx"
    dest.write_bytes(b"the model that was there before")
    with pytest.raises(AgreementTooLowError):
        quantize_model(fp32_path=fp32, int8_path=dest, calibration_dir=few, min_agreement=1.0)
    assert dest.read_bytes() == b"the model that was there before"
    assert entries(tmp_path) == ["previous.int8.onnx", "rigged.onnx"]


@pytest.mark.parametrize("threshold", [1.01, -0.1, float("nan")])
def test_impossible_threshold_is_refused_before_any_work(
    tmp_path: Path, fp32_model: Path, threshold: float
) -> None:
    dest = tmp_path / "out" / "q.onnx"
    with pytest.raises(QuantizationError, match=r"min_agreement must be within 0\.\.1"):
        quantize_model(fp32_path=fp32_model, int8_path=dest, min_agreement=threshold)
    assert not dest.parent.exists()


def test_missing_fp32_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="fetch-model"):
        quantize_model(fp32_path=tmp_path / "nope.onnx", int8_path=tmp_path / "q.onnx")


def test_model_is_replaced_atomically(
    tmp_path: Path, fp32_model: Path, few: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "out" / "q.onnx"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    replaced: list[tuple[Path, Path]] = []
    real_replace: Callable[[Path, Path], None] = os.replace

    def spy(src: Path, dst: Path) -> None:
        # The old file is intact until one rename swaps in a complete new one, same folder.
        assert Path(dst).read_bytes() == b"old"
        assert Path(src).parent == Path(dst).parent
        onnx.checker.check_model(onnx.load(str(src)))
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    quantize_model(fp32_path=fp32_model, int8_path=dest, calibration_dir=few, min_agreement=0)
    assert len(replaced) == 1
    assert replaced[0][1] == dest
    assert entries(dest.parent) == ["q.onnx"]


def test_a_failure_midway_leaves_no_temporary_file(
    tmp_path: Path, fp32_model: Path, few: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(quantization, "quantize_static", broken)
    dest = tmp_path / "out" / "q.onnx"
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        quantize_model(fp32_path=fp32_model, int8_path=dest, calibration_dir=few)
    assert entries(dest.parent) == []


# -- calibration and evaluation images -----------------------------------------------------------


def png_file(path: Path, colour: tuple[int, int, int]) -> Path:
    Image.new("RGB", (40, 30), colour).save(path, "PNG")
    return path


def test_calibration_and_eval_folders(tmp_path: Path, fp32_model: Path) -> None:
    calibration = photo_folder(tmp_path / "cal", 3, seed=1)
    (calibration / "notes.txt").write_text("not an image, skipped")
    evaluation = photo_folder(tmp_path / "eval", 4, seed=2)
    report = quantize_model(
        fp32_path=fp32_model,
        int8_path=tmp_path / "q.onnx",
        calibration_dir=calibration,
        eval_dir=evaluation,
        min_agreement=0,
    )
    assert report.calibration_photos == 3
    assert report.calibration_images == 3 * VIEWS_PER_IMAGE
    assert report.calibration_source == f"images from {calibration}"
    assert report.agreement.images == 4  # held-out images are evaluated as they are, no views
    assert report.eval_source == f"images from {evaluation}"
    assert not report.eval_in_sample
    assert "IN-SAMPLE" not in str(report)


def test_default_calibration_is_the_shipped_photos(tmp_path: Path, fp32_model: Path) -> None:
    report = quantize_model(fp32_path=fp32_model, int8_path=tmp_path / "q.onnx", min_agreement=0)
    assert report.calibration_photos == len(shipped_images()) == 10
    assert report.calibration_images == 10 * VIEWS_PER_IMAGE
    assert "photos shipped with cross-pictures" in report.calibration_source


def test_shipped_photos_are_not_the_imagenet_dev_photos() -> None:
    shipped = shipped_images()
    names = [name for name, _ in shipped]
    assert names == sorted(names)
    assert all(name.endswith(".jpg") for name in names)
    if PHOTOS.is_dir():
        dev = {p.read_bytes() for p in PHOTOS.iterdir() if p.suffix == ".JPEG"}
        assert dev
        assert not dev & {data for _, data in shipped}
    for name, data in shipped:  # every one is an image the service accepts, at most 512 pixels
        with Image.open(io.BytesIO(data)) as image:
            assert max(image.size) <= 512, name
        assert prepare_image(data, max_pixels=MAX_PIXELS).tensor.shape == (3, 224, 224)


def test_views_are_the_mirror_and_five_crops() -> None:
    original = pattern((200, 100))
    views = [Image.open(io.BytesIO(v)) for v in extra_views(encode(original, "PNG"))]
    assert len(views) == VIEWS_PER_IMAGE - 1
    assert all(v.format == "PNG" for v in views)
    mirror = np.asarray(views[0])
    np.testing.assert_array_equal(mirror, np.asarray(original)[:, ::-1])
    crop_w, crop_h = int(200 * 0.55), int(100 * 0.55)
    assert [v.size for v in views[1:]] == [(crop_w, crop_h)] * 5
    pixels = np.asarray(original)
    np.testing.assert_array_equal(np.asarray(views[1]), pixels[:crop_h, :crop_w])  # top left
    np.testing.assert_array_equal(np.asarray(views[4]), pixels[-crop_h:, -crop_w:])  # bottom right
    x, y = (200 - crop_w) // 2, (100 - crop_h) // 2
    np.testing.assert_array_equal(np.asarray(views[5]), pixels[y : y + crop_h, x : x + crop_w])


def test_views_of_a_big_photo_are_reduced_but_keep_ample_resolution() -> None:
    views = extra_views(encode(smooth_photo((4000, 3000)), "JPEG", quality=90))
    sizes = [Image.open(io.BytesIO(v)).size for v in views]
    assert sizes[0][0] < 4000  # box-reduced
    assert all(min(size) >= 512 for size in sizes[1:])  # crops still twice the 256 resize


def test_views_keep_transparency_composited_like_the_service() -> None:
    rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 0))
    views = extra_views(encode(rgba, "PNG"))
    assert all(Image.open(io.BytesIO(v)).mode == "RGBA" for v in views)
    stacked = prepare_views([("clear.png", encode(rgba, "PNG"))], max_pixels=MAX_PIXELS)
    assert stacked.shape == (VIEWS_PER_IMAGE, 3, 224, 224)
    # Every view is the white the service composites a transparent image onto.
    np.testing.assert_allclose(stacked, stacked[:1].repeat(VIEWS_PER_IMAGE, axis=0), atol=1e-6)


def test_read_images_sorts_and_skips_other_files(tmp_path: Path) -> None:
    png_file(tmp_path / "b.png", (1, 2, 3))
    png_file(tmp_path / "a.JPEG.png", (4, 5, 6))
    (tmp_path / "golden.json").write_text("[]")
    (tmp_path / "sub.png").mkdir()
    assert [name for name, _ in read_images(tmp_path)] == ["a.JPEG.png", "b.png"]


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(QuantizationError, match="holds no image files"):
        read_images(tmp_path)
    with pytest.raises(QuantizationError, match="is not a folder"):
        read_images(tmp_path / "missing")


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    good = png_file(tmp_path / "good.png", (9, 9, 9)).read_bytes()
    with pytest.raises(QuantizationError, match=r"^broken\.jpg: "):
        prepare_all([("good.png", good), ("broken.jpg", b"\xff\xd8\xff garbage")], max_pixels=10**6)
    tensors = prepare_all([("good.png", good)], max_pixels=MAX_PIXELS)
    assert tensors.shape == (1, 3, 224, 224)
    assert tensors.dtype == np.float32


def test_tensor_reader_gives_batches_then_none_and_rewinds() -> None:
    tensors = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    reader = TensorReader("data", tensors, batch=2)
    assert len(reader) == 3
    sizes = []
    while (feed := reader.get_next()) is not None:
        assert list(feed) == ["data"]
        sizes.append(len(feed["data"]))
    assert sizes == [2, 2, 1]
    reader.rewind()
    again = reader.get_next()
    assert again is not None
    np.testing.assert_array_equal(again["data"], tensors[:2])


# -- agreement -----------------------------------------------------------------------------------


def test_compare_counts_top1_agreement_and_drift() -> None:
    fp32 = np.array([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.3, 0.3, 0.4]], dtype=np.float32)
    int8 = np.array([[0.6, 0.3, 0.1], [0.1, 0.4, 0.5], [0.3, 0.3, 0.4]], dtype=np.float32)
    agreement = compare(fp32, int8)
    assert (agreement.images, agreement.agreeing) == (3, 2)
    assert agreement.mean_top1_delta == pytest.approx(0.2 / 3)
    assert agreement.max_top1_delta == pytest.approx(0.1)
    assert agreement.rate == pytest.approx(2 / 3)
    # fp32 is confident (top-1 >= 50%) about the first two rows only; int8 keeps one of them.
    assert (agreement.confident_images, agreement.confident_agreeing) == (2, 1)
    assert agreement.gated_rate == pytest.approx(1 / 2)
    assert agreement.gated_counts() == "1/2 confident"
    with pytest.raises(ValueError, match="shapes"):
        compare(fp32, int8[:2])


def test_empty_agreement_rate_is_zero() -> None:
    empty = Agreement(
        images=0,
        agreeing=0,
        confident_images=0,
        confident_agreeing=0,
        mean_top1_delta=0,
        max_top1_delta=0,
    )
    assert empty.rate == empty.gated_rate == 0.0


def test_gate_counts_every_image_when_fp32_is_never_confident() -> None:
    fp32 = np.array([[0.4, 0.35, 0.25], [0.3, 0.4, 0.3]], dtype=np.float32)
    int8 = np.array([[0.3, 0.4, 0.3], [0.3, 0.4, 0.3]], dtype=np.float32)
    agreement = compare(fp32, int8)
    assert agreement.confident_images == 0
    assert agreement.gated_rate == agreement.rate == pytest.approx(1 / 2)
    assert agreement.gated_counts() == "1/2 (fp32 confident on none)"


# -- the command ---------------------------------------------------------------------------------


def test_cli_writes_the_model_and_prints_the_report(
    tmp_path: Path,
    fp32_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MODEL_PATH", str(fp32_model))
    calibration = photo_folder(tmp_path / "cal")
    out = tmp_path / "cli.int8.onnx"
    args = ["--calibration", str(calibration), "--output", str(out), "--min-agreement", "0"]
    code = cli.main(["quantize", *args])
    assert code == 0
    assert out.is_file()
    assert f"wrote {out}" in capsys.readouterr().out


def test_cli_refusal_exits_non_zero_with_the_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fp32 = tiny_conv_model(tmp_path / "rigged.onnx", classes=4, rigged=True)
    monkeypatch.setenv("MODEL_PATH", str(fp32))
    calibration = photo_folder(tmp_path / "cal")
    out = tmp_path / "cli.int8.onnx"
    args = ["--calibration", str(calibration), "--output", str(out), "--min-agreement", "0.9"]
    code = cli.main(["quantize", *args])
    assert code == 1
    err = capsys.readouterr().err
    assert "refusing to write" in err
    assert "below the threshold 90.0%" in err
    assert not out.exists()


# -- the real model ------------------------------------------------------------------------------


def test_real_model_int8_agrees_with_fp32_on_dev_photos(tmp_path: Path) -> None:
    """The default command (shipped calibration photos, default gate) on all 100 dev photos."""
    fp32 = require_model()
    golden = require_photos()
    evaluation = tmp_path / "eval"  # linked, never copied
    evaluation.mkdir()
    for entry in golden:
        (evaluation / entry["file"]).symlink_to(PHOTOS / entry["file"])
    int8 = tmp_path / "resnet50.int8.onnx"
    report = quantize_model(fp32_path=fp32, int8_path=int8, eval_dir=evaluation)
    assert report.written
    assert report.agreement.images == 100
    assert report.agreement.gated_rate >= DEFAULT_MIN_AGREEMENT
    assert report.agreement.rate >= 0.93  # measured 96/100
    assert report.int8_bytes < report.fp32_bytes / 3
    # And it is as accurate as fp32 (92/100 top-1, test_real_model.py) against the true labels.
    tensors = prepare_all(
        [(e["file"], (PHOTOS / e["file"]).read_bytes()) for e in golden], max_pixels=MAX_PIXELS
    )
    predicted = quantization.run_model(int8, tensors, threads=2).argmax(axis=1)
    correct = sum(int(p) == e["class_index"] for p, e in zip(predicted, golden, strict=True))
    assert correct >= 90, correct


def test_built_int8_model_agrees_with_fp32() -> None:
    """If `make quantize` built resources/resnet50.int8.onnx, it must be a good one."""
    fp32 = require_model()
    if not INT8_MODEL_PATH.is_file():
        pytest.skip(f"{INT8_MODEL_PATH} is not built (make quantize)")
    golden = require_photos()
    images = [(e["file"], (PHOTOS / e["file"]).read_bytes()) for e in golden[::5]]
    tensors = prepare_all(images, max_pixels=MAX_PIXELS)
    agreement = compare(
        quantization.run_model(fp32, tensors, threads=2),
        quantization.run_model(INT8_MODEL_PATH, tensors, threads=2),
    )
    assert agreement.gated_rate >= DEFAULT_MIN_AGREEMENT, agreement
