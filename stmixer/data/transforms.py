"""Clip transforms of the official AVA recipe: short-side scaling, flip, colour jitter, normalization, pathways.

Frames come in as a list of uint8 ``[H, W, 3]`` BGR arrays (as decoded by OpenCV) and
boxes as normalized ``[n, 4]`` x1, y1, x2, y2. A clip goes out as ClipPixels, which
becomes a float32 tensor ``[3, T, H', W']`` (normalized, channels in the model's order)
where it is needed, with its boxes in absolute pixels x1, y1, x2, y2 of the resized
clip, clipped to ``[0, W' - 1]`` and ``[0, H' - 1]``.

Two interchangeable paths turn uint8 frames into the normalized tensor: the fast one
(``frames_to_tensor``: one OpenCV lookup table per channel, written straight into the
output, e.g. the padded batch) and the reference one (``frames_to_tensor_reference``:
plain PyTorch float32 arithmetic, frame by frame). They agree to float32 rounding (tested).
"""

import cv2
import numpy as np
import torch

# Official colour-jitter strengths and PCA-lighting standard deviation (hard-coded there too).
COLOR_JITTER_STRENGTH = 0.4
PCA_ALPHA_STD = 0.1
# ITU-R 601 luma weights of R, G, B (the official grayscale).
_LUMA_RGB = (0.299, 0.587, 0.114)
# Source channel (of a BGR frame) for each output channel.
RGB_FROM_BGR = (2, 1, 0)
BGR_FROM_BGR = (0, 1, 2)


def choose_short_side(sizes, mode, rng):
    """Pick the short-side length (pixels) of one training clip.

    Args:
        sizes: ``DATA.TRAIN_MIN_SCALES``.
        mode: "choice": one entry of ``sizes`` (official); "range": a uniform integer in
            ``[min(sizes), max(sizes)]`` (mmaction2 style).
        rng: numpy Generator.
    """
    if mode == "choice":
        return int(sizes[rng.integers(len(sizes))])
    if mode == "range":
        return int(rng.integers(min(sizes), max(sizes) + 1))
    raise ValueError(f"unknown short-side sampling mode {mode!r}; expected 'choice' or 'range'")


def resized_size(height, width, short_side, max_long_side):
    """Frame size after scaling the short side to ``short_side`` pixels.

    The long side follows the aspect ratio, rounded half up as the official code does;
    when it would exceed ``max_long_side`` the long side is set to ``max_long_side`` and the
    short side follows instead (the official code never applies this cap; for AVA's
    aspect ratios it never triggers).

    Returns:
        (new_height, new_width) in pixels.
    """
    short, long = min(height, width), max(height, width)
    new_short, new_long = short_side, int(long / short * short_side + 0.5)
    if new_long > max_long_side:
        new_long, new_short = max_long_side, int(short / long * max_long_side + 0.5)
    return (new_long, new_short) if height > width else (new_short, new_long)


def mmcv_resized_size(height, width, short_side):
    """Frame size after scaling the short side to ``short_side`` pixels as ``mmcv.rescale_size(..., (inf, S))``
    rounds it (mmaction2's ``Resize(scale=(-1, S))``): each side ``int(side * (S / short) + 0.5)``.

    Returns:
        (new_height, new_width) in pixels.
    """
    factor = short_side / min(height, width)
    return int(height * factor + 0.5), int(width * factor + 0.5)


def mmaction2_boxes_to_pixels(boxes, height, width):
    """Normalized ``[n, 4]`` -> absolute pixels as mmaction2's frame decoders do: the product in float64
    (``boxes`` as given, e.g. float64 from a proposal file), then rounded to float32; no clipping."""
    scale = np.array([width, height, width, height])
    return (np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale).astype(np.float32)


def resize_frames(frames, height, width):
    """Bilinear resize (OpenCV ``INTER_LINEAR`` on uint8) of every frame to ``[height, width]``; no-op at equal size."""
    if frames[0].shape[:2] == (height, width):
        return frames
    return [cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR) for frame in frames]


def flip_frames(frames):
    """Mirror every ``[H, W, C]`` frame left-right (new arrays)."""
    return [cv2.flip(frame, 1) for frame in frames]


def boxes_to_pixels(boxes, height, width):
    """Normalized ``[n, 4]`` x1, y1, x2, y2 -> absolute pixels of a ``height`` x ``width`` frame, clipped."""
    boxes = np.asarray(boxes, dtype=np.float32) * np.array([width, height, width, height], dtype=np.float32)
    return clip_boxes(boxes, height, width)


def clip_boxes(boxes, height, width):
    """Clip absolute ``[n, 4]`` boxes to x in ``[0, width - 1]`` and y in ``[0, height - 1]`` (new array)."""
    boxes = np.array(boxes, dtype=np.float32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, width - 1.0)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, height - 1.0)
    return boxes


def random_crop_offsets(height, width, size, rng):
    """Top-left corner ``(y, x)`` of mmaction2's ``RandomCrop(size)`` of a ``height`` x ``width`` frame.

    As mmaction2: ``y`` uniform in ``[0, height - size)`` when ``height > size``, else 0 (numpy's
    ``randint`` excludes its high end, so the crop never reaches the last row or column of a larger
    frame); ``x`` likewise, drawn after ``y``.
    """
    if size > height or size > width:
        raise ValueError(f"a {size}x{size} crop does not fit a {height}x{width} frame "
                         "(DATA.TRAIN_CROP_SIZE must not exceed the scaled short side)")
    y = int(rng.integers(0, height - size)) if height > size else 0
    x = int(rng.integers(0, width - size)) if width > size else 0
    return y, x


def crop_frames(frames, y, x, size):
    """The ``size`` x ``size`` window at ``(y, x)`` of every ``[H, W, C]`` frame (contiguous copies)."""
    return [np.ascontiguousarray(frame[y:y + size, x:x + size]) for frame in frames]


def crop_boxes(boxes, y, x, size):
    """Absolute pixel boxes of a frame -> of its ``size`` x ``size`` crop at ``(y, x)``: shifted, then
    clipped to ``[0, size - 1]`` (mmaction2's ``RandomCrop._box_crop``; a box outside the crop
    becomes degenerate and is kept)."""
    cropped = np.array(boxes, dtype=np.float32) - np.array([x, y, x, y], dtype=np.float32)
    return np.clip(cropped, 0.0, size - 1.0)


def flip_boxes(boxes, width):
    """Mirror absolute pixel boxes in a frame ``width`` pixels wide: x -> width - 1 - x (x1 and x2 swap)."""
    flipped = np.array(boxes, dtype=np.float32)
    flipped[:, 0] = width - 1.0 - boxes[:, 2]
    flipped[:, 2] = width - 1.0 - boxes[:, 0]
    return flipped


def mmaction2_flip_boxes(boxes, width):
    """Mirror absolute pixel boxes as mmaction2's ``Flip`` does: x -> width - x (x1 and x2 swap), dtype kept."""
    flipped = np.array(boxes)
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def pca_lighting_shift(rng, eigval, eigvec, alpha_std=PCA_ALPHA_STD):
    """AlexNet-style PCA lighting: the per-channel RGB offset (pixel units / 255) for one clip.

    Args:
        rng: numpy Generator.
        eigval: ``[3]`` eigenvalues of the RGB covariance.
        eigvec: ``[3, 3]`` eigenvectors; row i is the R, G or B channel's components.
        alpha_std: standard deviation of the random weights.

    Returns:
        float32 ``[3]`` offsets for R, G, B.
    """
    alpha = rng.normal(0.0, alpha_std, size=3)
    return (np.asarray(eigvec, dtype=np.float64) @ (alpha * np.asarray(eigval, dtype=np.float64))).astype(np.float32)


def _luma(clip):
    return _LUMA_RGB[0] * clip[0] + _LUMA_RGB[1] * clip[1] + _LUMA_RGB[2] * clip[2]


def color_jitter(clip, rng, strength=COLOR_JITTER_STRENGTH):
    """Brightness, contrast and saturation jitter in a random order, one factor each per clip.

    Args:
        clip: float32 ``[3, T, H, W]`` RGB in [0, 1] (modified in place and returned).
        rng: numpy Generator.
        strength: each factor is drawn from ``1 + U(-strength, strength)``.

    Brightness scales the pixels; contrast blends each frame with the mean of its luma;
    saturation blends each pixel with its luma.
    """
    for op in rng.permutation(3):
        factor = float(1.0 + rng.uniform(-strength, strength))
        if op == 0:
            clip.mul_(factor)
        elif op == 1:
            frame_mean = _luma(clip).mean(dim=(1, 2), keepdim=True)
            clip.mul_(factor).add_((1.0 - factor) * frame_mean)
        else:
            gray = _luma(clip)
            clip.mul_(factor).add_((1.0 - factor) * gray)
    return clip


def normalization_lut(mean, std, shift=(0.0, 0.0, 0.0)):
    """Lookup table ``[3, 256]`` float32: ``lut[c, v] = (v / 255 + shift[c] - mean[c]) / std[c]``."""
    values = np.arange(256, dtype=np.float32)[None, :] / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32)[:, None]
    std = np.asarray(std, dtype=np.float32)[:, None]
    shift = np.asarray(shift, dtype=np.float32)[:, None]
    return np.ascontiguousarray((values + shift - mean) / std, dtype=np.float32)


def frames_to_tensor(frames, channel_order, lut, out=None):
    """Fast path: uint8 frames -> float32 ``[3, T, H, W]`` through a per-channel lookup table.

    Args:
        frames: list of T uint8 ``[H, W, 3]`` arrays (BGR as decoded).
        channel_order: source channel of each output channel (``RGB_FROM_BGR`` or ``BGR_FROM_BGR``).
        lut: float32 ``[3, 256]`` from ``normalization_lut`` (rows in output channel order).
        out: optional float32 tensor ``[3, T, H, W]`` to write into (it may be a view into a
            padded batch); a new tensor otherwise.

    Every output plane is written once, in place, by ``cv2.LUT``. Returns ``out``.
    """
    height, width = frames[0].shape[:2]
    if out is None:
        out = torch.empty((3, len(frames), height, width), dtype=torch.float32)
    target = out.numpy()
    tables = [np.ascontiguousarray(lut[c]).reshape(1, 256) for c in range(3)]
    for t, frame in enumerate(frames):
        planes = cv2.split(frame)
        for c, source in enumerate(channel_order):
            plane = target[c, t]
            result = cv2.LUT(planes[source], tables[c], dst=plane)
            if not np.shares_memory(result, plane):  # OpenCV could not write in place
                plane[...] = result
    return out


class ClipPixels:
    """A transformed clip before its float conversion, so that each pixel is written once,
    straight where it is needed (e.g. into the padded batch).

    Holds either uint8 BGR frames plus the lookup table that normalizes them (the fast path), or
    the finished float32 clip (reference path, colour jitter).

    Args:
        frames: list of T uint8 ``[H, W, 3]`` BGR arrays, with ``channel_order`` and ``lut``
            (see ``frames_to_tensor``); or
        tensor: float32 ``[3, T, H, W]``.
    """

    def __init__(self, frames=None, channel_order=None, lut=None, tensor=None):
        if (frames is None) == (tensor is None):
            raise ValueError("ClipPixels holds either frames (with channel_order and lut) or a tensor")
        self.frames, self.channel_order, self.lut, self.tensor = frames, channel_order, lut, tensor

    @property
    def shape(self):
        """(3, T, H, W) of the float clip."""
        if self.tensor is not None:
            return tuple(self.tensor.shape)
        height, width = self.frames[0].shape[:2]
        return 3, len(self.frames), height, width

    def select(self, indices):
        """The clip at frame ``indices`` (all frames for None), e.g. a SlowFast Slow pathway."""
        if indices is None:
            return self
        if self.tensor is not None:
            return ClipPixels(tensor=self.tensor.index_select(1, torch.as_tensor(indices)))
        return ClipPixels([self.frames[i] for i in indices], self.channel_order, self.lut)

    def to_tensor(self, out=None):
        """The normalized float32 ``[3, T, H, W]`` clip, written into ``out`` when given."""
        if self.tensor is None:
            return frames_to_tensor(self.frames, self.channel_order, self.lut, out)
        if out is None:
            return self.tensor
        return out.copy_(self.tensor)


def frames_to_tensor_reference(frames, channel_order, mean, std, shift=(0.0, 0.0, 0.0)):
    """Reference path: the same result as ``frames_to_tensor`` with plain float32 PyTorch ops, frame by frame.

    Args:
        frames: list of T uint8 ``[H, W, 3]`` BGR arrays.
        channel_order: source channel of each output channel.
        mean, std, shift: per output channel (see ``normalization_lut``).

    Returns:
        float32 ``[3, T, H, W]``.
    """
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    shift = torch.tensor(shift, dtype=torch.float32).view(3, 1, 1)
    out = []
    for frame in frames:
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float()
        image = image[list(channel_order)] / 255.0
        out.append((image + shift - mean) / std)
    return torch.stack(out, dim=1)


SLOW_FRAME_MODES = ("linspace", "stride")


def slow_pathway_indices(num_frames, alpha, mode="linspace"):
    """Frame indices of the Slow pathway (``DATA.SLOW_PATHWAY_FRAMES``).

    "linspace" (PySlowFast): ``linspace(0, T - 1, T // alpha)`` in float32, truncated; for T = 32,
    alpha = 4: 0, 4, 8, 13, 17, 22, 26, 31. "stride" (mmaction2's ``ResNet3dSlowFast``, nearest
    interpolation by ``1 / resample_rate``): every ``alpha``-th frame from the first, 0, 4, ..., 28.
    """
    count = num_frames // alpha
    if count < 1:
        raise ValueError(f"a clip of {num_frames} frames has no Slow frames at SLOWFAST.ALPHA = {alpha}")
    if mode == "stride":
        return torch.arange(count) * alpha
    if mode != "linspace":
        raise ValueError(f"DATA.SLOW_PATHWAY_FRAMES must be one of {SLOW_FRAME_MODES}, got {mode!r}")
    return torch.linspace(0, num_frames - 1, count).long()


def pathway_frame_indices(num_frames, num_pathways, alpha, slow_frames="linspace"):
    """Frames of each backbone pathway: ``[None]`` (all frames) for one pathway; for SlowFast
    ``[slow_pathway_indices(num_frames, alpha, slow_frames), None]`` (Slow first, Fast = the whole clip)."""
    if num_pathways == 1:
        return [None]
    if num_pathways == 2:
        return [slow_pathway_indices(num_frames, alpha, slow_frames).tolist(), None]
    raise ValueError(f"MODEL.BACKBONE.PATHWAYS must be 1 or 2, got {num_pathways}")


class ClipTransform:
    """The per-clip recipe of the official AVA pipeline (one instance per split).

    Args:
        short_sides: candidate short-side lengths in pixels (``DATA.TRAIN_MIN_SCALES`` or
            ``DATA.TEST_MIN_SCALES``).
        max_long_side: cap on the long side (``DATA.TRAIN_MAX_SCALE`` / ``TEST_MAX_SCALE``).
        mean, std: normalization per output channel (of pixels scaled to [0, 1]).
        train: random short side (``scale_mode``), random flip with ``flip_prob`` and
            optional colour augmentation; otherwise the first short side and a flip only
            when ``flip_prob`` is 1 (``AVA.TEST_FORCE_FLIP``).
        scale_mode: "choice" or "range" (see ``choose_short_side``).
        crop_size: training only: side of a random square crop after the scaling (mmaction2's
            ``RandomCrop``, see ``random_crop_offsets``); 0 for none.
        flip_prob: probability of a horizontal flip.
        color_jitter: apply brightness/contrast/saturation jitter (training only).
        pca_lighting: (eigval, eigvec) for PCA lighting jitter, or None (training only).
        output_bgr: give the model BGR channels instead of RGB.
        reference: use the plain-PyTorch tensor conversion instead of the lookup tables.
        box_style: "stmixer" (official STMixer box arithmetic, see ``__call__``) or "mmaction2" (mmaction2's
            RawFrameDecode / Resize / Flip: pixels from float64 normalized boxes rounded to float32, per-axis
            float32 scale factors ``new / old``, flip x -> W - x, no clipping; frame size ``mmcv_resized_size``).
    """

    def __init__(self, short_sides, max_long_side, mean, std, train, scale_mode="choice", flip_prob=0.0,
                 color_jitter=False, pca_lighting=None, output_bgr=False, reference=False, crop_size=0,
                 box_style="stmixer"):
        if not short_sides:
            raise ValueError("the list of short-side sizes is empty")
        self.short_sides = [int(s) for s in short_sides]
        self.max_long_side = int(max_long_side)
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"DATA.MEAN and DATA.STD need 3 values each, got {mean} and {std}")
        self.train = train
        self.scale_mode = scale_mode
        self.flip_prob = float(flip_prob)
        self.crop_size = int(crop_size) if train else 0
        self.color_jitter = bool(color_jitter) and train
        self.pca_lighting = pca_lighting if train else None
        self.channel_order = BGR_FROM_BGR if output_bgr else RGB_FROM_BGR
        self.reference = reference
        if box_style not in ("stmixer", "mmaction2"):
            raise ValueError(f"unknown box style {box_style!r}; expected 'stmixer' or 'mmaction2'")
        self.box_style = box_style
        choose_short_side(self.short_sides, scale_mode, np.random.default_rng(0))  # validates the mode

    def scaled_size(self, height, width, short_side=None):
        """(height, width) a ``height`` x ``width`` frame is scaled to (before any crop); ``short_side``
        defaults to the first of ``short_sides`` (the test size)."""
        short_side = self.short_sides[0] if short_side is None else int(short_side)
        if self.box_style == "mmaction2":  # mmcv's rounding; mmaction2 has no long-side cap (ours still applies)
            new_height, new_width = mmcv_resized_size(height, width, short_side)
            if max(new_height, new_width) <= self.max_long_side:
                return new_height, new_width
        return resized_size(height, width, short_side, self.max_long_side)

    def __call__(self, frames, boxes, rng, source_size=None, scale_rng=None):
        """Transform one clip.

        Args:
            frames: list of T uint8 ``[H, W, 3]`` BGR arrays.
            boxes: ``[n, 4]`` normalized x1, y1, x2, y2 (every row is transformed alone, so ground-truth
                boxes and proposals go through together, stacked).
            rng: numpy Generator (all random choices of this clip).
            source_size: (H, W) of the frames as decoded when ``frames`` were already scaled to
                ``scaled_size(H, W)`` (a test-time stream, ``keyframe_clips``); the boxes and the
                scaling are then computed from it, so the result equals that of the decoded frames
                up to the pixels' resampling. None: the frames' own size.
            scale_rng: numpy Generator of the training short side alone (the sampler's draw shared
                across processes, ``DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES``); None: ``rng``.

        Returns:
            (ClipPixels of the float32 ``[3, T, H', W']`` clip, boxes float32 ``[n, 4]``
            absolute pixels of the resized (and cropped) clip, clipped to it with the "stmixer" box style).
        """
        height, width = frames[0].shape[:2] if source_size is None else (int(v) for v in source_size)
        mmaction2 = self.box_style == "mmaction2"
        boxes = mmaction2_boxes_to_pixels(boxes, height, width) if mmaction2 else boxes_to_pixels(boxes, height, width)
        if self.train:
            short_side = choose_short_side(self.short_sides, self.scale_mode, rng if scale_rng is None else scale_rng)
        else:
            short_side = self.short_sides[0]
        new_height, new_width = self.scaled_size(height, width, short_side)
        frames = resize_frames(frames, new_height, new_width)
        if mmaction2:
            boxes = boxes * np.array([new_width / width, new_height / height] * 2, dtype=np.float32)
        else:
            # Official quirk kept: boxes scale by the short-side ratio on both axes (the long
            # side's rounding makes the image's own ratio differ by under half a pixel).
            boxes = boxes * np.float32(min(new_height, new_width) / min(height, width))
        if self.crop_size:
            y, x = random_crop_offsets(new_height, new_width, self.crop_size, rng)
            frames = crop_frames(frames, y, x, self.crop_size)
            boxes = crop_boxes(boxes, y, x, self.crop_size)
            new_height = new_width = self.crop_size
        flip = self.flip_prob >= 1.0 or (self.flip_prob > 0.0 and rng.random() < self.flip_prob)
        if flip:
            frames = flip_frames(frames)
            boxes = mmaction2_flip_boxes(boxes, new_width) if mmaction2 else flip_boxes(boxes, new_width)
        return self._pixels(frames, rng), boxes if mmaction2 else clip_boxes(boxes, new_height, new_width)

    def _pixels(self, frames, rng):
        if self.color_jitter:
            # Jitter on RGB in [0, 1], then lighting, then normalization (the official order),
            # in the output channel order at the end.
            clip = self._convert(frames, RGB_FROM_BGR, (0.0,) * 3, (1.0,) * 3, (0.0,) * 3).to_tensor()
            color_jitter(clip, rng)
            shift = self._lighting(rng)
            if self.channel_order != RGB_FROM_BGR:
                clip, shift = clip.flip(0), shift[::-1]
            mean = torch.tensor(self.mean).view(3, 1, 1, 1)
            std = torch.tensor(self.std).view(3, 1, 1, 1)
            return ClipPixels(tensor=clip.add_(torch.tensor(shift.copy()).view(3, 1, 1, 1)).sub_(mean).div_(std))
        shift = self._lighting(rng)
        if self.channel_order != RGB_FROM_BGR:
            shift = shift[::-1]
        return self._convert(frames, self.channel_order, self.mean, self.std, shift)

    def _lighting(self, rng):
        if not self.pca_lighting:
            return np.zeros(3, dtype=np.float32)
        eigval, eigvec = self.pca_lighting
        return pca_lighting_shift(rng, eigval, eigvec)

    def _convert(self, frames, channel_order, mean, std, shift):
        if self.reference:
            return ClipPixels(tensor=frames_to_tensor_reference(frames, channel_order, mean, std, shift))
        return ClipPixels(frames, channel_order, normalization_lut(mean, std, shift))
