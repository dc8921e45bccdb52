import json
import os

import cv2
import numpy as np
import pytest

from stmixer.data.synthetic import ground_truth_path, write_synthetic_video
from stmixer.data.video import VideoReadError, VideoSource, VideoWriter, resample, resampled_length


def _tagged(value, height=8, width=10):
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = value
    return frame


@pytest.fixture(scope="module")
def odd_video(tmp_path_factory):
    """A 2 s synthetic video of odd size (360 x 203) at 24 fps, with its ground truth."""
    path = str(tmp_path_factory.mktemp("video") / "odd.mp4")
    write_synthetic_video(path, seconds=2, size=(203, 360), fps=24, seed=5)
    return path


def test_odd_size_video_round_trips_with_size_rate_and_frames(odd_video):
    source = VideoSource(odd_video)
    assert (source.height, source.width, source.fps, source.num_frames) == (203, 360, 24.0, 48)
    timed = list(source.frames())
    assert len(timed) == 48
    assert [t for t, _ in timed] == pytest.approx([i / 24 for i in range(48)], abs=1e-6)
    assert all(frame.shape == (203, 360, 3) and frame.dtype == np.uint8 for _, frame in timed)


def test_synthetic_video_pixels_match_the_renderer_and_ground_truth(odd_video):
    from stmixer.data.synthetic import plan_dataset, render_frames

    spec = plan_dataset(2, 1, 203, 360, 5, val_fraction=0.5)[0]
    rendered = list(render_frames(spec, 24, 48))
    decoded = [frame for _, frame in VideoSource(odd_video).frames()]
    psnr = [cv2.PSNR(a, b) for a, b in zip(rendered, decoded)]
    assert min(psnr) > 28
    lines = [json.loads(line) for line in open(ground_truth_path(odd_video))]
    assert [line["frame"] for line in lines] == list(range(48))
    assert len(lines[0]["persons"]) == len(spec.actors)
    for person, actor in zip(lines[0]["persons"], spec.actors):
        assert [a["id"] for a in person["actions"]] == actor.actions
        x1, y1, x2, y2 = person["box"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def test_render_short_side_draws_small_and_scales_up(tmp_path):
    path = str(tmp_path / "up.mp4")
    write_synthetic_video(path, seconds=0.5, size=(203, 360), fps=24, seed=5, render_short_side=64)
    frame = next(VideoSource(path).frames())[1]
    assert frame.shape == (203, 360, 3)
    # Scaled up 3.2x: neighbouring pixels are nearly equal, unlike the native rendering's grain.
    small = cv2.resize(cv2.resize(frame, (113, 64), interpolation=cv2.INTER_AREA), (360, 203))
    assert cv2.PSNR(frame, small) > 30


def test_resample_picks_the_nearest_frame_in_time():
    source = [(i / 24, i) for i in range(48)]  # 2 s at 24 fps, frames tagged by index
    out = list(resample(source, 30))
    assert len(out) == resampled_length(47 / 24, 30) == 59
    assert [i for i, _ in out] == list(range(59))
    for index, tag in out:
        distances = [abs(index / 30 - i / 24) for i in range(48)]
        assert abs(index / 30 - tag / 24) == pytest.approx(min(distances))
    halved = [tag for _, tag in resample([(i / 60, i) for i in range(60)], 30)]
    assert halved == list(range(0, 60, 2))
    assert [tag for _, tag in resample([(i / 30, i) for i in range(7)], 30)] == list(range(7))


def test_frame_folder_in_natural_order_at_the_given_rate(tmp_path):
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame_{i}.png"), _tagged(i))
    (tmp_path / "notes.txt").write_text("not a frame")
    source = VideoSource(str(tmp_path), folder_fps=12.5)
    assert (source.num_frames, source.height, source.width, source.fps) == (3, 8, 10, 12.5)
    timed = list(source.frames())
    assert [t for t, _ in timed] == [0.0, 0.08, 0.16]
    assert [int(frame[0, 0, 0]) for _, frame in timed] == [1, 2, 10]


def test_frame_folder_errors_name_the_folder_or_file(tmp_path):
    with pytest.raises(VideoReadError, match="holds no frame images"):
        VideoSource(str(tmp_path))
    cv2.imwrite(str(tmp_path / "a1.png"), _tagged(1))
    cv2.imwrite(str(tmp_path / "a2.png"), _tagged(2, height=9))
    with pytest.raises(VideoReadError, match="a2.png is 10x9"):
        list(VideoSource(str(tmp_path)).frames())


def test_missing_or_undecodable_inputs_name_the_path(tmp_path):
    with pytest.raises(VideoReadError, match="input not found: .*nowhere.mp4"):
        VideoSource(str(tmp_path / "nowhere.mp4"))
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"this is not a video" * 100)
    with pytest.raises(VideoReadError, match="cannot decode .*fake.mp4"):
        VideoSource(str(fake))


def test_truncated_video_fails_naming_the_file_or_yields_the_frames_before_the_cut(odd_video, tmp_path):
    data = open(odd_video, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    try:
        frames = list(VideoSource(str(cut)).frames())
    except VideoReadError as e:
        assert "cut.mp4" in str(e)
    else:
        assert 0 < len(frames) < 48


def test_writer_is_atomic(tmp_path):
    path = tmp_path / "out.mp4"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with VideoWriter(str(path), 24, 8, 10) as writer:
            writer.write(_tagged(1))
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.mp4"]
    with VideoWriter(str(path), 30000 / 1001, 8, 10) as writer:
        for i in range(5):
            writer.write(_tagged(40 * i))
        with pytest.raises(ValueError, match="9x8 written to a 10x8 video"):
            writer.write(np.zeros((8, 9, 3), np.uint8))
    source = VideoSource(str(path))
    assert source.fps == pytest.approx(29.97, abs=0.01)
    assert len(list(source.frames())) == 5
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_noise_video(path, frames=90, codec="libx264", size=(120, 160), fps=30):
    """A video of random frames (every frame large, so a cut lands inside one)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _truncate(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def test_truncated_mpeg_ts_warns_naming_file_and_frames(tmp_path, caplog):
    path = tmp_path / "cut.ts"
    _write_noise_video(path)
    whole = len(list(VideoSource(str(path)).frames()))
    assert whole == 90 and not [r for r in caplog.records if r.levelname == "WARNING"]
    _truncate(path, 0.57)
    with caplog.at_level("WARNING", logger="stmixer.data.video"):
        frames = list(VideoSource(str(path)).frames())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{path}: the video looks truncated or damaged (")
    assert f"damaged frame from frame {len(frames) - 1} on" in warnings[0]
    assert "the file ends inside a 188-byte transport-stream packet" in warnings[0]
    assert warnings[0].endswith(f"); using the {len(frames)} frames decoded")


def test_cut_between_packets_of_a_transport_stream_still_warns(tmp_path, caplog):
    path = tmp_path / "cut.ts"
    _write_noise_video(path, frames=30, codec="mpeg4", size=(48, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 // 188 * 188 + 100])
    with caplog.at_level("WARNING", logger="stmixer.data.video"):
        list(VideoSource(str(path)).frames())
    assert "ends inside a 188-byte transport-stream packet" in caplog.text


def test_fewer_frames_than_the_container_declares_warns(tmp_path, caplog):
    path = tmp_path / "cut.avi"
    _write_noise_video(path, frames=60, codec="mpeg4", size=(48, 64))
    _truncate(path, 0.5)
    source = VideoSource(str(path))
    assert source.num_frames == 60  # the AVI header keeps the whole frame count
    with caplog.at_level("WARNING", logger="stmixer.data.video"):
        frames = list(source.frames())
    assert f"{len(frames)} frames decoded, but its container declares 60" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="stmixer.data.video"):
        list(source.frames())  # a second pass (demo.py renders after detecting) does not repeat it
    assert "truncated" not in caplog.text
