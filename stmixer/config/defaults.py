"""The one configuration tree of stmixer.

Every key carries a one-line comment directly above it (meaning and unit);
``python -m stmixer.config`` prints them as a reference table and a test checks
that none is missing. Key names, types and default values follow the official
STMixer defaults, so the official config files merge unchanged and give the
same tree as in the official code. Keys that the official code does not have
are marked "(stmixer)" in their comment.
"""

from .config import CfgNode as CN

_C = CN()

# ---------------------------------------------------------------------------
# Input clips
# ---------------------------------------------------------------------------
_C.DATA = CN()
# Root folder of the dataset (holds frames/, frame_lists/ and the annotation folder).
_C.DATA.PATH_TO_DATA_DIR = ""
# Frames per input clip (for SlowFast: frames of the Fast pathway).
_C.DATA.NUM_FRAMES = 4
# Temporal stride between sampled frames of a clip, in frames of the TARGET_FPS video.
_C.DATA.SAMPLING_RATE = 16
# (stmixer) SlowFast: frames of the Slow pathway, "linspace" (PySlowFast: linspace(0, NUM_FRAMES - 1, NUM_FRAMES / ALPHA), truncated) or "stride" (mmaction2: every ALPHA-th frame from the first).
_C.DATA.SLOW_PATHWAY_FRAMES = "linspace"
# Input channels per pathway: [3] for single-pathway backbones, [3, 3] for SlowFast.
_C.DATA.INPUT_CHANNEL_NUM = [3]
# Per-channel mean subtracted from pixels scaled to [0, 1], in the channel order fed to the model (official: disk BGR order; equal values make no difference).
_C.DATA.MEAN = [0.45, 0.45, 0.45]
# Per-channel standard deviation dividing pixels scaled to [0, 1].
_C.DATA.STD = [0.225, 0.225, 0.225]
# Training short-side sizes in pixels; each clip takes one entry (official), or see TRAIN_SCALE_SAMPLING.
_C.DATA.TRAIN_MIN_SCALES = [256, 320]
# (stmixer) How a training clip's short side is drawn: "choice" = one entry of TRAIN_MIN_SCALES (official), "range" = a uniform integer in [min, max] of it.
_C.DATA.TRAIN_SCALE_SAMPLING = "choice"
# (stmixer) Training on several processes: True = at every step the j-th clip of every process's batch draws the same short side (each clip's draw keeps its distribution and the clips of one process's batch stay independent, but the processes' batches are alike), so with frames of one size every process pads its batch to the same shape and none waits for a larger one (at the official 2 clips per GPU and two scales, on 4 GPUs 68 % of the steps, 1 - (3/4)^4 - (1/4)^4, have a process whose batch is padded smaller than another's, and it waits); False = every clip its own draw (official). Changes which short sides a run draws (not their distribution); docs/distributed.md.
_C.DATA.TRAIN_SCALE_SHARED_ACROSS_PROCESSES = False
# Largest allowed long side during training, in pixels (the scale is reduced to respect it; the official code ignores it).
_C.DATA.TRAIN_MAX_SCALE = 1333
# Test-time short-side size(s) in pixels; the first entry is used.
_C.DATA.TEST_MIN_SCALES = [256]
# Largest allowed long side at test time, in pixels.
_C.DATA.TEST_MAX_SCALE = 1333
# Frame rate (frames per second) that videos are resampled to before clip sampling.
_C.DATA.TARGET_FPS = 30
# Video decoding backend for the demo on raw videos: "pyav" or "torchvision".
_C.DATA.DECODING_BACKEND = "pyav"
# (stmixer) Side in pixels of a random square crop of each training clip after the short-side scaling (mmaction2's RandomCrop; boxes shifted and clipped to it); 0 = no crop.
_C.DATA.TRAIN_CROP_SIZE = 0
# Randomly flip training clips horizontally (probability 0.5).
_C.DATA.RANDOM_FLIP = True
# (mmaction2) Box arithmetic of the clip transforms: "stmixer" (official STMixer: boxes scaled by the short-side ratio, clipped to [0, W - 1], flip x -> W - 1 - x) or "mmaction2" (pixels = normalized x (W, H) in float64 then float32, per-axis scale factors, flip x -> W - x, no clipping; frame size rounded as mmcv.rescale_size). Applies to ground-truth boxes and proposals alike.
_C.DATA.BOX_TRANSFORM = "stmixer"
# Reverse the channel order of the model input (RGB <-> BGR) after normalization.
_C.DATA.REVERSE_INPUT_CHANNEL = False
# Names of the datasets used for training and testing: "ava_v2.2" (also "ava_v2.1", "ava"), "ava_kinetics" (AVA + Kinetics clips, mmaction2 layout), "ucf24", "jhmdb" or "tubes" (your own data in the UCF/JHMDB layout); recognition: "kinetics400", "sthv1", "sthv2" or "rawframes" (RECOGNITION.*); see stmixer/data/descriptions.py.
_C.DATA.DATASETS = ["ava_v2.2"]

# ---------------------------------------------------------------------------
# (stmixer) UCF101-24 / JHMDB-21 layout: frames per video + ground-truth pickle (paths relative to DATA.PATH_TO_DATA_DIR)
# ---------------------------------------------------------------------------
_C.TUBES = CN()
# Ground-truth pickle with labels, gttubes, nframes, train_videos, test_videos, resolution (e.g. UCF101v2-GT.pkl, JHMDB-GT.pkl).
_C.TUBES.GT_FILE = "UCF101v2-GT.pkl"
# Folder of the extracted frames (e.g. rgb-images for UCF101-24, Frames for JHMDB-21).
_C.TUBES.FRAME_DIR = "rgb-images"
# Path of a frame inside FRAME_DIR: a Python format string of {video} (the pickle's name, e.g. Basketball/v_Basketball_g01_c01) and {frame} (1-based).
_C.TUBES.FRAME_TEMPLATE = "{video}/{frame:05d}.jpg"
# Which split of train_videos / test_videos to use, 1-based (JHMDB-21 has 3; UCF101-24 has 1).
_C.TUBES.SPLIT = 1
# Evaluation: the highest-scored (box, class) pairs kept per frame for frame-mAP and tube linking (MOC-Detector keeps 100).
_C.TUBES.DETECTIONS_PER_FRAME = 100

# ---------------------------------------------------------------------------
# (stmixer) Recognition task: raw frames + list files "<frame dir> <num frames> <label>" (DATA.DATASETS
# "kinetics400", "sthv1", "sthv2" or "rawframes"; paths relative to DATA.PATH_TO_DATA_DIR; docs/recognition.md)
# ---------------------------------------------------------------------------
_C.RECOGNITION = CN()
# Folder the training list's frame dirs are relative to ("" = DATA.PATH_TO_DATA_DIR itself; mmaction2's Kinetics-400: "rawframes_train").
_C.RECOGNITION.TRAIN_FRAME_DIR = "rawframes"
# Folder the test list's frame dirs are relative to (mmaction2's Kinetics-400: "rawframes_val"; Something-Something: the same folder as training).
_C.RECOGNITION.TEST_FRAME_DIR = "rawframes"
# Training list file.
_C.RECOGNITION.TRAIN_LIST = "train_list.txt"
# Test (validation) list file.
_C.RECOGNITION.TEST_LIST = "val_list.txt"
# Frame file name: a str.format template of the frame number (Kinetics-400 / Something-Something v2 as mmaction2 extracts them: "img_{:05d}.jpg"; Something-Something v1: "{:05d}.jpg").
_C.RECOGNITION.FILENAME_TMPL = "img_{:05d}.jpg"
# File number of a video's first frame (1 for the Kinetics / Something-Something layouts, 0 for 0-based frames).
_C.RECOGNITION.START_INDEX = 1
# Frame sampling: "dense" (one clip of DATA.NUM_FRAMES frames DATA.SAMPLING_RATE apart; random start in training, TEST_NUM_CLIPS uniformly spaced clips in testing) or "segments" (TSN: NUM_SEGMENTS equal segments of DATA.NUM_FRAMES / NUM_SEGMENTS frames each; random offset per segment in training, segment centres in testing).
_C.RECOGNITION.SAMPLING = "dense"
# Segments per clip ("segments" sampling); DATA.NUM_FRAMES must be a multiple of it.
_C.RECOGNITION.NUM_SEGMENTS = 8
# Clips per video at test time ("dense" sampling); each clip is a view whose scores are averaged per video.
_C.RECOGNITION.TEST_NUM_CLIPS = 10
# Spatial crops per clip at test time: 1 (centre crop) or 3 (three crops along the long side, mmaction2's ThreeCrop).
_C.RECOGNITION.TEST_NUM_CROPS = 1
# Side of the square training crop in pixels, taken at random from the frame resized to a DATA.TRAIN_MIN_SCALES short side.
_C.RECOGNITION.TRAIN_CROP_SIZE = 224
# Side of the square test crop(s) in pixels, from the frame resized to DATA.TEST_MIN_SCALES[0] (three crops: usually equal to it).
_C.RECOGNITION.TEST_CROP_SIZE = 224
# Frame indices past a video's end: "loop" (wrap around, mmaction2's default) or "repeat_last" (repeat the clip's last frame).
_C.RECOGNITION.OUT_OF_BOUND = "loop"

# ---------------------------------------------------------------------------
# AVA layout (all paths relative to DATA.PATH_TO_DATA_DIR)
# ---------------------------------------------------------------------------
_C.AVA = CN()
# Folder of extracted frames: <FRAME_DIR>/<video>/<video>_%06d.jpg at 30 fps.
_C.AVA.FRAME_DIR = "frames/"
# Folder of the frame-list CSVs (train.csv, val.csv).
_C.AVA.FRAME_LIST_DIR = "frame_lists/"
# Folder of the annotation files (boxes, label map, exclusions, proposals).
_C.AVA.ANNOTATION_DIR = "annotations_v2.2/"
# Frame-list file names (in FRAME_LIST_DIR) read for training.
_C.AVA.TRAIN_LISTS = ["train.csv"]
# Frame-list file names (in FRAME_LIST_DIR) read for testing.
_C.AVA.TEST_LISTS = ["val.csv"]
# Box CSV file names (in ANNOTATION_DIR) read for training; names containing "predicted_boxes" hold detector proposals.
_C.AVA.TRAIN_GT_BOX_LISTS = ["ava_train_v2.2.csv"]
# Box CSV file names (in ANNOTATION_DIR) read for testing.
_C.AVA.TEST_GT_BOX_LISTS = ["ava_val_v2.2.csv"]
# (stmixer) Rows of box files named "*predicted_boxes*" with a score (last column) below this are ignored.
_C.AVA.DETECTION_SCORE_THRESH = 0.9
# Frames on disk are read in BGR order and kept so (the model then expects BGR input).
_C.AVA.BGR = False
# Apply colour jitter / PCA lighting augmentation to training clips.
_C.AVA.TRAIN_USE_COLOR_AUGMENTATION = False
# With colour augmentation on: use only PCA lighting jitter (no brightness/contrast/saturation jitter).
_C.AVA.TRAIN_PCA_JITTER_ONLY = True
# Eigenvalues of the RGB pixel covariance used by PCA lighting jitter.
_C.AVA.TRAIN_PCA_EIGVAL = [0.225, 0.224, 0.229]
# Eigenvectors (rows, RGB) of the pixel covariance used by PCA lighting jitter.
_C.AVA.TRAIN_PCA_EIGVEC = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
]
# Flip every test clip horizontally (test-time flip).
_C.AVA.TEST_FORCE_FLIP = False
# Evaluate on all annotated val keyframes (True) or only those listed in the frame lists (False).
_C.AVA.STRICT_EVAL = True
# Label map (.pbtxt, in ANNOTATION_DIR): the classes that are evaluated.
_C.AVA.LABEL_MAP_FILE = "ava_action_list_v2.2_for_activitynet_2019.pbtxt"
# Excluded-timestamps CSV (in ANNOTATION_DIR): keyframes dropped from evaluation and from both data splits ("" for none).
_C.AVA.EXCLUSION_FILE = "ava_val_excluded_timestamps_v2.2.csv"
# Ground-truth CSV (in ANNOTATION_DIR) the evaluation compares against.
_C.AVA.GROUNDTRUTH_FILE = "ava_val_v2.2.csv"

# ---------------------------------------------------------------------------
# (mmaction2) Person proposals from a file, for the two-stage detectors (MODEL.META_ARCHITECTURE "FastRCNN"); see stmixer/data/proposals.py
# ---------------------------------------------------------------------------
_C.PROPOSALS = CN()
# Proposals of the training split: mmaction2's pickle (.pkl, {"<video>,<second:04d>": [N, 5] normalized x1, y1, x2, y2, score}) or a CSV (.csv, video_id,timestamp,x1,y1,x2,y2,score); relative paths are under AVA.ANNOTATION_DIR; "" = none (samples carry no proposals).
_C.PROPOSALS.TRAIN_FILE = ""
# Proposals of the test split (same formats), e.g. ava_dense_proposals_val.FAIR.recall_93.9.pkl; "" = none.
_C.PROPOSALS.TEST_FILE = ""
# Keep a keyframe's proposals with score >= min(DET_SCORE_THR, its best score) (mmaction2's person_det_score_thr).
_C.PROPOSALS.DET_SCORE_THR = 0.9
# At most this many proposals per keyframe, the first ones of the file after thresholding (mmaction2's num_max_proposals).
_C.PROPOSALS.NUM_MAX = 1000
# A training keyframe missing from TRAIN_FILE gets: "whole_frame" (the box [0, 0, 1, 1], score 1; mmaction2) or "gt" (its ground-truth boxes, score 1). Test keyframes always get the whole frame.
_C.PROPOSALS.TRAIN_FALLBACK = "whole_frame"

# ---------------------------------------------------------------------------
# Data loader
# ---------------------------------------------------------------------------
_C.DATALOADER = CN()
# Worker processes per training/test process that decode and transform clips.
_C.DATALOADER.NUM_WORKERS = 4
# Padded clip height and width of a batch are rounded up to a multiple of this many pixels.
_C.DATALOADER.SIZE_DIVISIBILITY = 32
# Batch only clips of the same orientation (portrait vs landscape) together.
_C.DATALOADER.ASPECT_RATIO_GROUPING = False

# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------
_C.MODEL = CN()
# Weight file to start from (pretrained backbone or detector checkpoint); empty for none.
_C.MODEL.WEIGHT = ""
# (stmixer) Model architecture, looked up in the detector registry (which also holds the recognizers: "Recognizer3D").
_C.MODEL.META_ARCHITECTURE = "STMDetector"
# (stmixer) Device to run on: "" picks cuda:<local rank> when CUDA is available, else cpu.
_C.MODEL.DEVICE = ""

_C.MODEL.BACKBONE = CN()
# Backbone name: "PySlowonly", "PySlowfast-R50", "PySlowfast-R101", "MAE-ViT-B", "MAE-ViT-L", "CSN-50", "CSN-152", "EVAD-ViT-B" or "EVAD-ViT-L" (default: the SlowOnly R50 the other defaults describe; official "Slowfast-Resnet50" was no registered name).
_C.MODEL.BACKBONE.CONV_BODY = "PySlowonly"
# Number of input pathways: 1 (SlowOnly, ViT) or 2 (SlowFast).
_C.MODEL.BACKBONE.PATHWAYS = 1
# Keep every backbone BatchNorm in eval mode during training (running statistics frozen).
_C.MODEL.BACKBONE.FROZEN_BN = False
# Momentum of the backbone BatchNorm running statistics (PyTorch convention).
_C.MODEL.BACKBONE.BN_MOMENTUM = 0.1
# Epsilon of the backbone BatchNorm layers.
_C.MODEL.BACKBONE.BN_EPSILON = 1e-05
# (stmixer) Convert BatchNorm to SyncBatchNorm when training on several CUDA processes (the official multi-GPU training does).
_C.MODEL.BACKBONE.SYNC_BN = True
# (stmixer) On CUDA, channels_last_3d (NDHWC) tensors for faster 3-D convolutions: the ResNet backbones' weights and inputs; the ViT backbones' tubelet embedding (one matrix product over the patches instead of a 3-channel convolution) and output maps (the tokens' own layout, so the ViT neck's convolutions need no layout transposes). The CPU path is unchanged.
_C.MODEL.BACKBONE.CHANNELS_LAST = True
# (stmixer) ResNet backbones (SlowOnly, SlowFast) in eval mode without gradients: each conv + BatchNorm (+ residual) + ReLU runs as one convolution with the BN folded into its weights (cuDNN's fused conv-bias-add-ReLU kernels; 0.75x the SlowFast-R50 inference step at 8 clips on an H100). "auto" = on CUDA only; True = also on the CPU (folded convolution + in-place ReLU); False = never. Training is unchanged. Same results up to float rounding; parity runs use False.
_C.MODEL.BACKBONE.FUSED_INFERENCE = "auto"
# (stmixer) ResNet backbones under CUDA autocast (SOLVER.AMP bf16 / fp16): run the stem convolutions (3-channel video input) in float32. cuDNN has no tensor-core kernel for 3-channel NDHWC bfloat16 3-D convolutions (the SlowFast-R50 Fast stem: 24.0 ms at 8 clips on an H100 in bfloat16, 6.5 ms in float32). False: the stems autocast like every other convolution (the official behaviour).
_C.MODEL.BACKBONE.FLOAT32_STEM = True
# (stmixer) ResNet backbones (SlowOnly, SlowFast): each 1 x k x k convolution (temporal kernel 1) of the stems and residual blocks runs as a 2-D convolution over the frames folded into the batch, in training and inference (stmixer/modeling/backbones/spatial_conv.py). cuDNN's 3-D heuristics give such convolutions of few channels a generic slow kernel; the 2-D kernels take the SlowFast-R50 backbone's convolutions from 17.1 to 12.1 ms (inference, 8 clips, H100). "auto" = CUDA channels_last_3d inputs of at most 64 channels per group; True = every such convolution on any device; False = never. Same parameters and state dict; same values up to float rounding; parity runs use False.
_C.MODEL.BACKBONE.SPATIAL_CONV_2D = "auto"
# (stmixer) ResNet backbones (SlowOnly, SlowFast) in training: each BatchNorm (+ residual) (+ ReLU) of the stems, residual blocks, shortcut projections, non-local blocks and SlowFast lateral connections runs as Triton kernels (stmixer/modeling/backbones/bn_act.py): batch statistics (running statistics updated as nn.BatchNorm3d does), or the running statistics for frozen BatchNorm with gradients; two passes forward and two backward instead of PyTorch's BatchNorm, addition and ReLU kernels. Only BatchNorm3d, and SyncBatchNorm in eval mode or (MODEL.CUDA_GRAPH.SYNC_BN) on its own process group, of 32+ channels on channels_last_3d CUDA activations; elsewhere the modules run. "auto" = CUDA GPUs of compute capability 8.0+ with Triton; True = also older GPUs; both self-checked once per device; False = never. Same values up to float rounding; parity runs use False.
_C.MODEL.BACKBONE.FUSED_TRAINING_BN = "auto"

# (stmixer) CUDA graphs of the STMixer detector (stmixer/modeling/cuda_graphs.py, docs/performance.md): one captured forward and backward per input shape, replayed.
_C.MODEL.CUDA_GRAPH = CN()
# What the graphs cover on CUDA: "model" (backbone, neck and decoder stages as one graph; the decoder stages only when the backbone has SyncBatchNorm), "split" (the same as two graphs, backbone + neck and decoder stages: under DistributedDataParallel the decoder's gradients, most of the bytes, are all-reduced while the backbone's backward replays, where "model" hands every gradient over at its end), "decoder" (the decoder stages) or "off" (the eager path; parity runs use it); the loss, the matching and the detection selection run eagerly; the CPU never uses graphs.
_C.MODEL.CUDA_GRAPH.SCOPE = "model"
# Input shapes (batch, frames, padded height and width, precision, train or eval) captured at most; further shapes run eagerly. Each capture holds its activations' memory.
_C.MODEL.CUDA_GRAPH.MAX_GRAPHS = 8
# With SCOPE model or split, MODEL.BACKBONE.SYNC_BN and several CUDA processes in training: True = the SyncBatchNorm layers get a process group of their own and run as the FUSED_TRAINING_BN Triton kernels, whose collectives (one all_gather forward, one all_reduce backward per layer) the graphs capture, so the graphs cover the backbone too (one H100, benchmarks/speed.py --sync-bn: the SlowFast-R50 bf16 training step at 2 and 8 clips 1.02x and 1.01x as fast as without SyncBatchNorm, PyTorch's module 0.80x and 0.78x; docs/distributed.md); False = PyTorch's SyncBatchNorm, and the graphs of training steps cover the decoder stages only. Same statistics either way. False by default until measured on several GPUs.
_C.MODEL.CUDA_GRAPH.SYNC_BN = False

# ir-CSN backbones ("CSN-50", "CSN-152"; TubeR's backbone, stmixer/modeling/backbones/csn.py)
_C.MODEL.CSN = CN()
# Spatial stride 2 in layer4 (res5): output stride 32; False (TubeR's configs, LAST_STRIDE): output stride 16.
_C.MODEL.CSN.LAST_STRIDE = False
# Epsilon of every CSN BatchNorm (1e-3: the Caffe2 ir-CSN weights' value, as TubeR).
_C.MODEL.CSN.BN_EPSILON = 1e-3
# Parameters with requires_grad=False: -1 none, k >= 0 the stem and layer1..layer k (TubeR freezes 2 when it starts from Kinetics weights).
_C.MODEL.CSN.FROZEN_STAGES = -1
# Temporal stride of layer2..layer4: 2 (TubeR's ir-CSN: T/8 frames out) or 1 (the TubeR fork's ir_CSN_50_variant, all T frames; its SeqFormer).
_C.MODEL.CSN.TEMPORAL_STRIDE = 2

# TubeR (MODEL.META_ARCHITECTURE "TubeR", stmixer/modeling/tuber/, docs/tuber.md; official yaml key in brackets)
_C.MODEL.TUBER = CN()
# Encoder-decoder between the projected backbone map and the heads, from TUBER_TRANSFORMER_REGISTRY: "detr" (TubeR's).
_C.MODEL.TUBER.TRANSFORMER = "detr"
# Width D of the transformer, queries and heads [D_MODEL]; TubeR's action cross-attention only fits 256.
_C.MODEL.TUBER.D_MODEL = 256
# Attention heads of the transformer [NHEAD].
_C.MODEL.TUBER.NHEAD = 8
# Encoder layers [ENC_LAYERS].
_C.MODEL.TUBER.ENC_LAYERS = 6
# Decoder layers [DEC_LAYERS] (one prediction per layer; all supervised with DEEP_SUPERVISION).
_C.MODEL.TUBER.DEC_LAYERS = 6
# FFN width of the transformer layers [DIM_FEEDFORWARD]; TubeR also uses it as the input width of input_proj / class_proj.
_C.MODEL.TUBER.DIM_FEEDFORWARD = 2048
# Dropout of the transformer layers [DROPOUT].
_C.MODEL.TUBER.DROPOUT = 0.1
# Pre-norm transformer layers [NORMALIZE_BEFORE] (TubeR: False, post-norm).
_C.MODEL.TUBER.NORMALIZE_BEFORE = False
# Tubelet queries per clip [QUERY_NUM].
_C.MODEL.TUBER.NUM_QUERIES = 15
# Temporal pooling of the backbone map before the transformer [TEMPORAL_DS_STRATEGY]: "decode" (a learned query), "avg", "max" or "center" (middle frame).
_C.MODEL.TUBER.TEMPORAL_POOL = "decode"
# Input width of input_proj and class_proj; 0: DIM_FEEDFORWARD, as TubeR (which must equal the backbone's 2048 channels).
_C.MODEL.TUBER.PROJ_IN_CHANNELS = 0
# Width of the action cross-attention (TubeR hard-codes 256, whatever D_MODEL).
_C.MODEL.TUBER.CROSS_ATTN_DIM = 256
# Compute the 3-D sine positions in float32 whatever the feature dtype, as TubeR (False: in the features' dtype).
_C.MODEL.TUBER.POSITION_FLOAT32 = True
# Matching cost weight of the actor-switch probability [MATCHER.COST_CLASS].
_C.MODEL.TUBER.COST_CLASS = 12.0
# Matching cost weight of the L1 distance of clip-normalized cxcywh boxes [MATCHER.COST_BBOX].
_C.MODEL.TUBER.COST_BBOX = 5.0
# Matching cost weight of the GIoU [MATCHER.COST_GIOU].
_C.MODEL.TUBER.COST_GIOU = 2.0
# Loss weight of the action loss loss_ce [LOSS_COFS.DICE_COF].
_C.MODEL.TUBER.ACTION_WEIGHT = 12.0
# Loss weight of the box L1 loss_bbox [LOSS_COFS.BBOX_COF].
_C.MODEL.TUBER.L1_WEIGHT = 5.0
# Loss weight of loss_giou [LOSS_COFS.GIOU_COF].
_C.MODEL.TUBER.GIOU_WEIGHT = 2.0
# Loss weight of the actor-switch cross-entropy loss_ce_b (TubeR: 1).
_C.MODEL.TUBER.SWITCH_WEIGHT = 1.0
# Weight of matched queries in the action BCE (unmatched: 1) [LOSS_COFS.WEIGHT].
_C.MODEL.TUBER.MATCHED_WEIGHT = 10.0
# Switch cross-entropy weight of the "no actor" class [LOSS_COFS.EOS_COF].
_C.MODEL.TUBER.EOS_COEF = 0.1
# Action loss: "bce" (TubeR) or "focal" (the seed branch's focal form, gamma FOCAL_GAMMA).
_C.MODEL.TUBER.CLASS_LOSS = "bce"
# Focusing exponent of CLASS_LOSS "focal".
_C.MODEL.TUBER.FOCAL_GAMMA = 2.0
# Supervise every decoder layer [TRAIN.AUX_LOSS].
_C.MODEL.TUBER.DEEP_SUPERVISION = True
# Reproduce TubeR's float32 loss hard-codes (float32 num_boxes makes L1 / GIoU float32 for float64 predictions); False: float64-clean.
_C.MODEL.TUBER.LOSS_FLOAT32 = True
# Inference: an actor-switch probability at or below this zeroes a query's action scores (TubeR's PostProcessAVA: 0.8).
_C.MODEL.TUBER.SWITCH_THRESHOLD = 0.8
# DETR weights (.pth with transformer.* / query_embed / bbox_embed keys) loaded into the head after MODEL.WEIGHT; empty for none [PRETRAIN_TRANSFORMER_DIR].
_C.MODEL.TUBER.DETR_WEIGHT = ""
# Learning-rate factor of the backbone and the "decode" temporal pooling (TubeR: LR_BACKBONE / LR = 1e-5 / 1e-4; its grouping matches "backbone" in names).
_C.MODEL.TUBER.BACKBONE_LR_FACTOR = 0.1
# Heads: "ava" (3-way actor switch per query, sigmoid actions) or "frame" (JHMDB / UCF101-24: NUM_QUERIES per frame of the clip, 2-way clip switch, softmax actions with "no action"; CLASS_LOSS ignored).
_C.MODEL.TUBER.HEAD = "ava"

# Deformable TubeR (MODEL.TUBER.TRANSFORMER "deformable": the TubeR fork's D2/D3/D4, docs/deformable_tuber.md)
_C.MODEL.TUBER.DEFORMABLE = CN()
# Which of the fork's detectors: "D2" (vanilla), "D3" (DETR + Deformable DETR) or "D4" (Deformable DETR + TubeR's action branch).
_C.MODEL.TUBER.DEFORMABLE.VARIANT = "D2"
# Feature levels of the deformable attention [NUM_FEATURE_LEVELS]: CSN layer2..layer4 + one extra stride-2 level (only 4 is supported).
_C.MODEL.TUBER.DEFORMABLE.NUM_FEATURE_LEVELS = 4
# Sampling points per head and level in the encoder's deformable attention [NUM_ENC_N_POINTS].
_C.MODEL.TUBER.DEFORMABLE.ENC_N_POINTS = 4
# Sampling points per head and level in the decoder's deformable cross-attention [NUM_DEC_N_POINTS].
_C.MODEL.TUBER.DEFORMABLE.DEC_N_POINTS = 4
# Reproduce the fork's time-major/batch-major regrouping before temporal pooling (clips of a batch mix when B > 1); False: each clip pools its own frames.
_C.MODEL.TUBER.DEFORMABLE.BATCH_TIME_MIX = True
# Inference scores gated by the actor switch as TubeR (sigmoid * p * (p > SWITCH_THRESHOLD)); False: the fork's PostProcessAVA, which overwrites the gated scores with sigmoid(logits).
_C.MODEL.TUBER.DEFORMABLE.SWITCH_GATE = False

# SeqFormer (MODEL.META_ARCHITECTURE "SeqFormer": the TubeR fork's SeqFormer, docs/seqformer.md; needs MODEL.CSN.TEMPORAL_STRIDE 1;
# widths, queries, MATCHED_WEIGHT, LOSS_FLOAT32 and BACKBONE_LR_FACTOR from MODEL.TUBER; the fork's yaml key in brackets)
_C.MODEL.SEQFORMER = CN()
# Deformable-attention levels: CSN layer2..layer4 plus NUM_FEATURE_LEVELS - 3 extra stride-2 levels, at least 3 [SeqFormer.NUM_FEATURE_LEVELS].
_C.MODEL.SEQFORMER.NUM_FEATURE_LEVELS = 4
# Sampling points per head and level in the encoder's deformable attention [SeqFormer.NUM_ENC_N_POINTS].
_C.MODEL.SEQFORMER.ENC_N_POINTS = 4
# Sampling points per head and level in the decoder's deformable attention [SeqFormer.NUM_DEC_N_POINTS].
_C.MODEL.SEQFORMER.DEC_N_POINTS = 4
# Per-layer heads with iterative box refinement of every frame's reference (True) or one head shared by all layers [SeqFormer.BOX_REFINE].
_C.MODEL.SEQFORMER.BOX_REFINE = True
# Supervise every decoder layer, not only the last [TRAIN.AUX_LOSS].
_C.MODEL.SEQFORMER.DEEP_SUPERVISION = False
# Matching cost weight of the focal class cost [LOSS_COFS.DICE_COF].
_C.MODEL.SEQFORMER.COST_CLASS = 2.0
# Matching cost weight of the L1 distance of normalized cxcywh boxes [LOSS_COFS.BBOX_COF].
_C.MODEL.SEQFORMER.COST_BBOX = 5.0
# Matching cost weight of -GIoU [LOSS_COFS.GIOU_COF].
_C.MODEL.SEQFORMER.COST_GIOU = 2.0
# alpha of the focal matching class cost (the fork hard-codes 0.25).
_C.MODEL.SEQFORMER.FOCAL_ALPHA = 0.25
# gamma of the focal matching class cost (the fork hard-codes 2).
_C.MODEL.SEQFORMER.FOCAL_GAMMA = 2.0
# Loss weight of the action BCE [MATCHER.COST_CLASS].
_C.MODEL.SEQFORMER.CLASS_WEIGHT = 2.0
# Loss weight of the L1 box term [MATCHER.COST_BBOX].
_C.MODEL.SEQFORMER.L1_WEIGHT = 5.0
# Loss weight of the GIoU term [MATCHER.COST_GIOU].
_C.MODEL.SEQFORMER.GIOU_WEIGHT = 2.0
# Matching class cost of a target: "batch_union" (the fork's quirk: the focal cost summed over the union of all the batch's target actions, the same for every target) or "per_target" (its own actions).
_C.MODEL.SEQFORMER.MATCH_CLASS_COST = "batch_union"
# The fork's quirk, time-major frames regrouped batch-major (a batch of several clips mixes their frames): "train" (in training only; inference per clip, so detections do not depend on the test batch), "always" (the fork's code, also at inference) or "never".
_C.MODEL.SEQFORMER.BATCH_TIME_MIX = "train"

# ---------------------------------------------------------------------------
# Long-term feature bank (mmaction2's LFB; shared heads FBONonLocal / FBOMax / FBOAvg / LFBInfer)
# ---------------------------------------------------------------------------
_C.MODEL.LFB = CN()
# Folder of the bank files (mmaction2's lfb_prefix_path); relative MODEL.LFB.FILES are under it, "" = as given.
_C.MODEL.LFB.PREFIX_PATH = ""
# Bank files read by the FBO heads, merged in order (later files' videos win): one per split, as mmaction2's dataset_modes ('train', 'val'); stmixer .npz or mmaction2 .pkl.
_C.MODEL.LFB.FILES = ["lfb_train.npz", "lfb_val.npz"]
# Channels of the bank features (mmaction2's lfb_channels; checked against the files).
_C.MODEL.LFB.CHANNELS = 2048
# Dtype the bank is held in: "" = the files' (float16 or float32, as written), "float16" / "float32" / "float64" converts on load.
_C.MODEL.LFB.DTYPE = ""
# Seconds of long-term features around the keyframe (window starts at second - WINDOW_SIZE // 2).
_C.MODEL.LFB.WINDOW_SIZE = 60
# Bank features sampled per second (randperm among that second's features; zero padding when fewer).
_C.MODEL.LFB.MAX_NUM_SAMPLED_FEAT = 5
# Pooling of the RoI features to one vector per RoI before the operator (FBO heads) or the bank writer: "avg" | "max".
_C.MODEL.LFB.TEMPORAL_POOL = "avg"
# Spatial pooling of the RoI features, as TEMPORAL_POOL: "avg" | "max".
_C.MODEL.LFB.SPATIAL_POOL = "max"
# FBONonLocal: channels of the non-local layers and of its output (RoI head input = RoI channels + this).
_C.MODEL.LFB.LATENT_CHANNELS = 512
# FBONonLocal: number of stacked residual non-local layers (>= 1).
_C.MODEL.LFB.NUM_NL_LAYERS = 2
# FBONonLocal: dropout after the short-term (RoI) feature projection.
_C.MODEL.LFB.ST_FEAT_DROPOUT = 0.2
# FBONonLocal: dropout after the long-term (bank) feature projection.
_C.MODEL.LFB.LT_FEAT_DROPOUT = 0.2
# FBONonLocal: output dropout of every non-local layer (fixed at 0.2 in mmaction2).
_C.MODEL.LFB.NL_DROPOUT = 0.2
# FBONonLocal: LayerNorm + ReLU before each layer's out_conv (True) or LayerNorm after it and ReLU after the residual (False).
_C.MODEL.LFB.PRE_ACTIVATE = True
# FBONonLocal: zero-initialise each non-local layer's out_conv (mmaction2's zero_init_out_conv).
_C.MODEL.LFB.ZERO_INIT_OUT_CONV = False
# FBONonLocal: reproduce mmaction2, whose zero_init_out_conv does nothing (its constant_init misses the ConvModule's conv); False makes ZERO_INIT_OUT_CONV effective.
_C.MODEL.LFB.ZERO_INIT_AS_MMACTION2 = True
# LFBInfer: store the bank in float16 (mmaction2's use_half_precision; half the size), else the model's dtype.
_C.MODEL.LFB.INFER_HALF_PRECISION = True

# ---------------------------------------------------------------------------
# ResNet-3D backbones (PySlowFast form)
# ---------------------------------------------------------------------------
_C.RESNET = CN()
# Residual block transformation: "bottleneck_transform" or "basic_transform".
_C.RESNET.TRANS_FUNC = "bottleneck_transform"
# Groups of the 3x3 bottleneck convolution: 1 for ResNet, > 1 for ResNeXt.
_C.RESNET.NUM_GROUPS = 1
# Channels per group of res2's bottleneck (64 gives the standard ResNet widths).
_C.RESNET.WIDTH_PER_GROUP = 64
# Use in-place ReLU activations (saves memory, same values).
_C.RESNET.INPLACE_RELU = True
# Put the spatial stride on the first 1x1 convolution of a block instead of the 3x3.
_C.RESNET.STRIDE_1X1 = False
# Initialize the scale of each block's last BatchNorm to zero (identity residual at start).
_C.RESNET.ZERO_INIT_FINAL_BN = False
# ResNet depth: 18, 50, 101 or 152.
_C.RESNET.DEPTH = 50
# Per stage and pathway: how many leading blocks use the stage's temporal kernel (the rest use 1).
_C.RESNET.NUM_BLOCK_TEMP_KERNEL = [[3], [4], [6], [3]]
# Per stage and pathway: spatial stride of the stage's first block.
_C.RESNET.SPATIAL_STRIDES = [[1], [2], [2], [2]]
# Per stage and pathway: spatial dilation of the stage's 3x3 convolutions.
_C.RESNET.SPATIAL_DILATIONS = [[1], [1], [1], [1]]

_C.NONLOCAL = CN()
# Per stage and pathway: indices of the blocks followed by a non-local block.
_C.NONLOCAL.LOCATION = [[[]], [[]], [[]], [[]]]
# Per stage and pathway: number of temporal groups a non-local block attends within.
_C.NONLOCAL.GROUP = [[1], [1], [1], [1]]
# Non-local affinity normalization: "dot_product" (divide by positions) or "softmax".
_C.NONLOCAL.INSTANTIATION = "dot_product"
# Non-local block layout: "pyslowfast" (keys/values pooled before their 1x1x1 convolutions, conv_out with
# bias) or "mmaction2" (mmcv NonLocal3d: convolutions first, then the pool; conv_out without bias).
_C.NONLOCAL.STYLE = "pyslowfast"
# Per stage and pathway: max-pool kernel [T, H, W] applied to the key/value inputs of a non-local block.
_C.NONLOCAL.POOL = [
    [[1, 2, 2], [1, 2, 2]],
    [[1, 2, 2], [1, 2, 2]],
    [[1, 2, 2], [1, 2, 2]],
    [[1, 2, 2], [1, 2, 2]],
]

_C.SLOWFAST = CN()
# Channel ratio Slow/Fast (the Fast pathway is BETA_INV times narrower).
_C.SLOWFAST.BETA_INV = 8
# Frame-rate ratio Fast/Slow (the Slow pathway sees NUM_FRAMES / ALPHA frames).
_C.SLOWFAST.ALPHA = 8
# Output/input channel ratio of the Fast-to-Slow fusion convolution.
_C.SLOWFAST.FUSION_CONV_CHANNEL_RATIO = 2
# Temporal kernel size (frames) of the Fast-to-Slow fusion convolution.
_C.SLOWFAST.FUSION_KERNEL_SZ = 5
# BatchNorm + ReLU after each Fast-to-Slow fusion convolution (PySlowFast: True; mmaction2's
# lateral_norm=False: False, the convolution output is concatenated as is).
_C.SLOWFAST.FUSION_BN_RELU = True

# ---------------------------------------------------------------------------
# Vision Transformer backbone (VideoMAE / VideoMAEv2)
# ---------------------------------------------------------------------------
_C.ViT = CN()
# Frames per patch-embedding tubelet.
_C.ViT.TUBELET_SIZE = 2
# Patch side in pixels.
_C.ViT.PATCH_SIZE = 16
# Input image channels.
_C.ViT.IN_CHANS = 3
# Token width (768 for ViT-B, 1024 for ViT-L).
_C.ViT.EMBED_DIM = 768
# Image side (pixels) the position table was made for; it is resized to other input sizes.
_C.ViT.PRETRAIN_IMG_SIZE = 224
# Learnable position embedding (True) instead of the fixed sine-cosine table (False).
_C.ViT.USE_LEARNABLE_POS_EMB = False
# Dropout probability after the position embedding and in the MLPs.
_C.ViT.DROP_RATE = 0.0
# Dropout probability on the attention weights.
_C.ViT.ATTN_DROP_RATE = 0.0
# Largest stochastic-depth rate (the last block's); rates grow linearly from 0 over the blocks.
_C.ViT.DROP_PATH_RATE = 0.2
# Number of transformer blocks.
_C.ViT.DEPTH = 12
# Attention heads per block.
_C.ViT.NUM_HEADS = 12
# MLP hidden width as a multiple of EMBED_DIM.
_C.ViT.MLP_RATIO = 4
# Learn query and value biases in the attention input projection (no key bias).
_C.ViT.QKV_BIAS = True
# Attention logit scale; None means head_dim ** -0.5.
_C.ViT.QK_SCALE = None
# Initial value of the per-channel layer scale; 0 disables layer scale.
_C.ViT.INIT_VALUES = 0.0
# Recompute each block's activations in the backward pass (activation checkpointing; saves memory).
_C.ViT.USE_CHECKPOINT = True
# (stmixer) Which blocks USE_CHECKPOINT recomputes (STMixer's ViT backbone; EVAD keeps its own): "all" (every block, the official behaviour, least memory) or "auto" (on CUDA, the fewest blocks, the first ones, that keep the others' saved activations, estimated as (9 + 2 x MLP_RATIO) x EMBED_DIM values per token and block, within RECOMPUTE_MEMORY_FRACTION of the GPU's memory; on the CPU every block). Same values and gradients either way; a ViT-B at 8 clips of 256x448 in bf16 keeps 0.7 GiB a block, so an 80 GB GPU recomputes none: 0.88x the training step, 18 instead of 9 GiB.
_C.ViT.RECOMPUTE = "auto"
# (stmixer) The "auto" budget of RECOMPUTE: a fraction of the GPU's total memory (0 recomputes every block).
_C.ViT.RECOMPUTE_MEMORY_FRACTION = 0.25
# (stmixer) torch.compile of the transformer blocks' residual branches (LayerNorm, attention or MLP, layer scale) and of the ViT neck (simple feature pyramid), stmixer/modeling/layers/compiled.py: "auto" = CUDA GPUs of compute capability 8.0+ with Triton, True = also the CPU (needs a C++ compiler), False = never (parity runs). Compiles in the first steps (tens of seconds) and once more for a second input shape (then dynamic shapes); a failure to compile warns once and runs eagerly. Same values up to float rounding.
_C.ViT.COMPILE = "auto"
# Layer-wise learning-rate decay per block from the top (1.0 = no decay).
_C.ViT.LAYER_DECAY = 0.75
# Weight decay of the ViT backbone parameters that are decayed.
_C.ViT.WEIGHT_DECAY = 0.05
# Backbone parameter names (or name suffixes) that get no weight decay.
_C.ViT.NO_WEIGHT_DECAY = ["pos_embed"]

# ---------------------------------------------------------------------------
# EVAD: keyframe-centric token pruning in the ViT (backbones "EVAD-ViT-B" / "EVAD-ViT-L"; ViT.* as above)
# ---------------------------------------------------------------------------
_C.EVAD = CN()
# Keep rate in (0, 1] of each ViT block, one per block (len = ViT.DEPTH); 1 = no pruning (official MODEL.KTP.KEEP_RATES).
_C.EVAD.KEEP_RATES = [1.0] * 12
# Factor on the keyframe queries' attention when ranking non-keyframe tokens; 1 = none (official MODEL.KTP.ENHANCED_WEIGHT).
_C.EVAD.ENHANCED_WEIGHT = 1.0
# The 4 ViT blocks (0-based, increasing) whose keyframe tokens feed the FPN at strides 4, 8, 16, 32 (official ViT.FPN_INDICES).
_C.EVAD.FPN_INDICES = [2, 5, 8, 11]
# EVAD detector (MODEL.META_ARCHITECTURE "EVAD"): context-refinement decoder width (official MODEL.CRD.EMBED_DIM; zoo 384 ViT-B, 512 ViT-L).
_C.EVAD.DECODER_DIM = 384
# Context-refinement decoder blocks; each classifies the persons (deep supervision) (official MODEL.CRD.DEPTH).
_C.EVAD.DECODER_DEPTH = 6
# Attention heads of the decoder blocks (official MODEL.CRD.NUM_HEADS).
_C.EVAD.DECODER_HEADS = 6
# MLP hidden width / decoder width (official MODEL.CRD.MLP_RATIO).
_C.EVAD.DECODER_MLP_RATIO = 4.0
# Dropout in the decoder MLPs and projections (official MODEL.CRD.DROP_RATE).
_C.EVAD.DECODER_DROP_RATE = 0.0
# Dropout on the decoder attention weights (official MODEL.CRD.ATTN_DROP_RATE).
_C.EVAD.DECODER_ATTN_DROP_RATE = 0.0
# Stochastic depth of the last decoder block, linear from 0 (official MODEL.CRD.DROP_PATH_RATE; zoo 0.1).
_C.EVAD.DECODER_DROP_PATH_RATE = 0.0
# Learn the decoder position table instead of the fixed sine table (official MODEL.CRD.USE_LEARNABLE_POS_EMB).
_C.EVAD.DECODER_LEARNABLE_POS_EMB = False
# Person-box enlargement (x, y) before the decoder's RoIAlign, fraction of the box size (official MODEL.CRD.ROI_EXTENSION; zoo [0.4, 0.2], the keep-1.0 row [0, 0]).
_C.EVAD.ROI_EXTENSION = [0.0, 0.0]
# RoIAlign bins per side on the restored token grid (official DETECTION.ROI_XFORM_RESOLUTION).
_C.EVAD.ROI_RESOLUTION = 7
# RoIAlign samples per bin and side on the token grid, 0 = adaptive (official ROI_BOX_HEAD.POOLER_SAMPLING_RATIO).
_C.EVAD.ROI_SAMPLING_RATIO = 2
# Width of the action classifier tower of each decoder block (official SparseRCNN.ACT_FC_DIM).
_C.EVAD.ACT_FC_DIM = 2048
# Linear-LayerNorm-ReLU layers of that tower (official SparseRCNN.NUM_ACT).
_C.EVAD.NUM_ACT_LAYERS = 1
# Weight of each decoder block's action BCE loss on the matched queries (official SparseRCNN.ACTION_WEIGHT).
_C.EVAD.ACTION_WEIGHT = 12.0
# Inference: queries with person probability >= this are reported; none -> all queries (official SparseRCNN.PERSON_THRESHOLD).
_C.EVAD.PERSON_THRESHOLD = 0.7
# Inference: keep only the k best action scores per person, 0 = all (official SparseRCNN.NUM_EVAL_ACT_CLASSES).
_C.EVAD.NUM_EVAL_ACT_CLASSES = 0
# Restore the kept tokens as the official code (k-th kept token at the k-th smallest kept position; docs/evad.md); False = at its own position.
_C.EVAD.RESTORE_SHUFFLE = True
# Training: probability per step of reading the action RoIs at the matched ground-truth boxes instead of the predicted ones (the official option has no effect: its replaced boxes are never read; 0 = official).
_C.EVAD.GT_BOXES_PROB = 0.0
# Learning-rate multiplier of the person stages and the context-refinement decoder (official det_head.*; SOLVER.LR_SCALE, zoo 8).
_C.EVAD.HEAD_LR_SCALE = 1.0
# EVAD's Sparse R-CNN person detector (stmixer.modeling.sparse_rcnn; official MODEL.SparseRCNN.*, ROI_BOX_HEAD.*).
_C.EVAD.PERSON = CN()
# Learned proposals (boxes and features) per clip (official NUM_PROPOSALS).
_C.EVAD.PERSON.NUM_PROPOSALS = 100
# Width of the proposal features, and of the FPN (official HIDDEN_DIM; the official FPN hard-codes 256).
_C.EVAD.PERSON.HIDDEN_DIM = 256
# Refinement stages, each supervised (official NUM_HEADS).
_C.EVAD.PERSON.NUM_STAGES = 6
# Attention heads of the proposal self-attention (official NHEADS).
_C.EVAD.PERSON.NHEADS = 8
# FFN hidden width of a stage (official DIM_FEEDFORWARD).
_C.EVAD.PERSON.DIM_FEEDFORWARD = 2048
# Dropout in the stages (official DROPOUT).
_C.EVAD.PERSON.DROPOUT = 0.0
# FFN activation: "relu", "gelu" or "glu" (official ACTIVATION).
_C.EVAD.PERSON.ACTIVATION = "relu"
# Inner width of the dynamic convolutions (official DIM_DYNAMIC).
_C.EVAD.PERSON.DIM_DYNAMIC = 64
# Parameter sets the dynamic layer generates (official NUM_DYNAMIC).
_C.EVAD.PERSON.NUM_DYNAMIC = 2
# Layers of the classification tower (official NUM_CLS).
_C.EVAD.PERSON.NUM_CLS = 1
# Layers of the box-regression tower (official NUM_REG).
_C.EVAD.PERSON.NUM_REG = 3
# RoIAlign bins per side on the FPN levels (official ROI_BOX_HEAD.POOLER_RESOLUTION).
_C.EVAD.PERSON.POOLER_RESOLUTION = 7
# RoIAlign samples per bin and side, 0 = adaptive (official ROI_BOX_HEAD.POOLER_SAMPLING_RATIO).
_C.EVAD.PERSON.POOLER_SAMPLING_RATIO = 2
# Loss and matching-cost weight of the person/no-object cross-entropy (official CLASS_WEIGHT).
_C.EVAD.PERSON.CLASS_WEIGHT = 2.0
# Loss and matching-cost weight of the GIoU term (official GIOU_WEIGHT).
_C.EVAD.PERSON.GIOU_WEIGHT = 2.0
# Loss and matching-cost weight of the L1 term on image-normalized boxes (official L1_WEIGHT).
_C.EVAD.PERSON.L1_WEIGHT = 5.0
# Cross-entropy weight of the no-object class (official NO_OBJECT_WEIGHT).
_C.EVAD.PERSON.NO_OBJECT_WEIGHT = 0.1

# ---------------------------------------------------------------------------
# STMixer decoder and set loss
# ---------------------------------------------------------------------------
_C.MODEL.STM = CN()
# Number of learned queries (candidate detections) per clip.
_C.MODEL.STM.NUM_QUERIES = 100
# Query and feature-pyramid channel width.
_C.MODEL.STM.HIDDEN_DIM = 256
# Number of decoder stages (each refines the boxes once).
_C.MODEL.STM.NUM_STAGES = 6
# Number of action classes of the action head (80 for AVA).
_C.MODEL.STM.ACTION_CLASSES = 80
# Number of object classes (1: person); the objectness head adds a no-object class.
_C.MODEL.STM.OBJECT_CLASSES = 1
# Attention heads of the query self-attention.
_C.MODEL.STM.NUM_HEADS = 8
# Dropout probability on the decoder self-attention weights (the official FFNs and heads ignore it).
_C.MODEL.STM.DROPOUT = 0.0
# Hidden width of the decoder FFNs.
_C.MODEL.STM.DIM_FEEDFORWARD = 2048
# Linear layers of each decoder FFN.
_C.MODEL.STM.NUM_FCS = 2
# Activation of the decoder FFNs and heads (a torch.nn class name, e.g. "ReLU").
_C.MODEL.STM.ACTIVATION = "ReLU"
# Sampling points per channel group in the spatial branch.
_C.MODEL.STM.SPATIAL_POINTS = 32
# Frames sampled in the temporal branch; must equal the temporal length of the features.
_C.MODEL.STM.TEMPORAL_POINTS = 4
# Output points of adaptive mixing as a multiple of its input points.
_C.MODEL.STM.OUT_MULTIPLIER = 4
# Channel groups of adaptive sampling and mixing.
_C.MODEL.STM.N_GROUPS = 4
# Linear-LayerNorm-activation layers before the objectness classifier.
_C.MODEL.STM.NUM_CLS = 1
# Linear-LayerNorm-activation layers before the action classifier.
_C.MODEL.STM.NUM_ACT = 1
# Linear-LayerNorm-activation layers before the box regressor.
_C.MODEL.STM.NUM_REG = 1
# Weight of the objectness cross-entropy, in the loss and the matching cost.
_C.MODEL.STM.OBJECT_WEIGHT = 2.0
# Weight of the action binary cross-entropy loss.
_C.MODEL.STM.ACTION_WEIGHT = 24.0
# Weight of the GIoU loss and matching cost.
_C.MODEL.STM.GIOU_WEIGHT = 2.0
# Weight of the L1 box loss and matching cost (boxes normalized by the clip size).
_C.MODEL.STM.L1_WEIGHT = 2.0
# Cross-entropy weight of the no-object class.
_C.MODEL.STM.BACKGROUND_WEIGHT = 0.1
# Add the losses of every earlier decoder stage (auxiliary losses).
_C.MODEL.STM.INTERMEDIATE_SUPERVISION = True
# Person score above which a query is kept at inference (the top 3 are kept when none is).
_C.MODEL.STM.PERSON_THRESHOLD = 0.6
# Official long-term memory switch; only False is supported (the official models never use it).
_C.MODEL.STM.MEM_ACTIVE = False
# (stmixer) Scalar backpropagated from the loss dict: "mean" of the terms (official trainer, sum / 4S) or "sum".
_C.MODEL.STM.LOSS_REDUCTION = "mean"
# (stmixer) Feature sampler: "auto" ("triton" on CUDA where Triton is installed, else "folded"), "folded" (the memory-saving grid_sample path; each level's frame-major copy made once per forward), "reference" (the official order of work) or "triton" (CUDA: the folded function as two Triton kernels with a cheaper backward than grid_sample's: 0.38x the reference sampler's time on an H100; "folded" where Triton or CUDA is missing, or for float64). Parity runs use "folded".
_C.MODEL.STM.SAMPLER = "auto"
# (stmixer) Compute the losses of all supervised stages as one stack (fewer kernel launches: 468 instead of 778 operator calls in the forward of the loss of a 6-stage decoder; 0.88x the graphed SlowFast-R50 training step at batch 2 on an H100): "auto" = stacked on CUDA (where training already varies run to run by the order of atomic additions, far more than stacking's float rounding), one computation per stage on the CPU (bit-exact official order, deterministic runs); True / False force one or the other. Same values up to float rounding (float32: ~1e-7). Parity runs use False.
_C.MODEL.STM.STACKED_LOSSES = "auto"

# ---------------------------------------------------------------------------
# (stmixer) Recognizers (MODEL.META_ARCHITECTURE "Recognizer3D": backbone -> classification head; docs/recognition.md)
# ---------------------------------------------------------------------------
_C.MODEL.RECOGNIZER = CN()
# Classification head, looked up in the recognizer head registry: "linear" (PySlowFast's ResNetBasicHead: global average pool per pathway, concat, dropout, linear; parameters head.projection.*).
_C.MODEL.RECOGNIZER.HEAD = "linear"
# Number of classes K (Kinetics-400: 400; Something-Something v1 / v2: 174).
_C.MODEL.RECOGNIZER.NUM_CLASSES = 400
# Dropout rate before the head's linear layer (PySlowFast Kinetics: 0.5).
_C.MODEL.RECOGNIZER.DROPOUT_RATE = 0.5
# Label smoothing of the cross-entropy loss (0 = plain cross entropy).
_C.MODEL.RECOGNIZER.LABEL_SMOOTHING = 0.0

# ---------------------------------------------------------------------------
# (stmixer) ST-ABN: the "stabn" recognizer head (MODEL.RECOGNIZER.HEAD "stabn", backbone PySlowonly; docs/stabn.md)
# ---------------------------------------------------------------------------
_C.MODEL.STABN = CN()
# Dropout rate before the attention branch's classifier Linear(K * DATA.NUM_FRAMES, K) (official Att_branch: 0.5); the perception classifier uses MODEL.RECOGNIZER.DROPOUT_RATE.
_C.MODEL.STABN.ATT_DROPOUT_RATE = 0.5
# Weight of the attention-branch cross entropy, used only with APPLY_ATT_LOSS_WEIGHT (the official config declares loss_weight=0.5).
_C.MODEL.STABN.ATT_LOSS_WEIGHT = 0.5
# False (official behaviour): the declared ATT_LOSS_WEIGHT is never applied, loss = CE(perception) + CE(attention); True: CE(perception) + ATT_LOSS_WEIGHT x CE(attention).
_C.MODEL.STABN.APPLY_ATT_LOSS_WEIGHT = False
# BatchNorm running-statistics updates per training step in the residual blocks (backbone res2..res5 and the attention branch's res5): 2 reproduces the official code, whose activation checkpointing (with_cp=True) recomputes every block in the backward pass and so updates them twice (= one update with momentum 1 - (1 - MODEL.BACKBONE.BN_MOMENTUM)^2); 1 = once.
_C.MODEL.STABN.BLOCK_BN_UPDATES = 2

# ---------------------------------------------------------------------------
# Two-stage detectors (MODEL.META_ARCHITECTURE "FastRCNN", mmaction2's FastRCNN + AVARoIHead)
# The backbone's last stage feeds the RoI head; mmaction2's layout has res5 at spatial stride 1
# (RESNET.SPATIAL_STRIDES [[1], [2], [2], [1]], per pathway for SlowFast): feature stride 16.
# ---------------------------------------------------------------------------
_C.MODEL.ROI_HEAD = CN()
# (mmaction2) Stride of the backbone's last-stage map w.r.t. the input (RoI boxes scaled by 1/stride); must match RESNET.SPATIAL_STRIDES (4 x their product).
_C.MODEL.ROI_HEAD.FEATMAP_STRIDE = 16
# (mmaction2) RoIAlign output size (per side) of every frame of the map.
_C.MODEL.ROI_HEAD.OUTPUT_SIZE = 8
# (mmaction2) RoIAlign sampling points per bin and axis; 0 = adaptive.
_C.MODEL.ROI_HEAD.SAMPLING_RATIO = 0
# (mmaction2) RoIAlign half-pixel alignment (aligned=True).
_C.MODEL.ROI_HEAD.ALIGNED = True
# (mmaction2) Pool the map over time before RoIAlign.
_C.MODEL.ROI_HEAD.WITH_TEMPORAL_POOL = True
# (mmaction2) That temporal pooling: "avg" or "max" (the "temporal max pooling" rows).
_C.MODEL.ROI_HEAD.TEMPORAL_POOL_MODE = "avg"
# (mmaction2) Concatenate the whole frame's pooled feature to every RoI's (the "+ context" rows).
_C.MODEL.ROI_HEAD.WITH_GLOBAL = False
# (mmaction2) Shared head between RoI extraction and the bbox head, a name in SHARED_HEAD_REGISTRY; "" = none.
_C.MODEL.ROI_HEAD.SHARED_HEAD = ""
# (mmaction2) Logits of the bbox head, including the background column 0 (AVA: 81 = 80 actions + 1).
_C.MODEL.ROI_HEAD.NUM_CLASSES = 81
# (mmaction2) Column 0 of the logits is the background column, left out of the loss and the scores.
_C.MODEL.ROI_HEAD.BACKGROUND_CLASS = True
# (mmaction2) The bbox head's pooling of the RoI features over time: "avg" or "max".
_C.MODEL.ROI_HEAD.HEAD_TEMPORAL_POOL = "avg"
# (mmaction2) The bbox head's pooling over space: "avg" or "max".
_C.MODEL.ROI_HEAD.HEAD_SPATIAL_POOL = "max"
# (mmaction2) Dropout probability of the bbox head.
_C.MODEL.ROI_HEAD.DROPOUT = 0.5
# (mmaction2) Dropout on the RoI features before pooling (True) or on the pooled vector (False).
_C.MODEL.ROI_HEAD.DROPOUT_BEFORE_POOL = True
# (mmaction2) Two-layer MLP classifier instead of one linear layer (the "nonlinear head" rows).
_C.MODEL.ROI_HEAD.MLP_HEAD = False
# (mmaction2) Focal weighting alpha of the classification loss (1 with gamma 0 = plain BCE).
_C.MODEL.ROI_HEAD.FOCAL_ALPHA = 1.0
# (mmaction2) Focal weighting gamma (the "focal loss" rows: 1).
_C.MODEL.ROI_HEAD.FOCAL_GAMMA = 0.0
# (mmaction2) Multi-label sigmoid BCE (True) or single-label softmax cross entropy (False).
_C.MODEL.ROI_HEAD.MULTILABEL = True
# (mmaction2) k of the logged recall@top-k / prec@top-k training metrics.
_C.MODEL.ROI_HEAD.TOPK = (3, 5)
# (mmaction2) Assigner: a proposal with IoU >= this with a ground-truth box is positive.
_C.MODEL.ROI_HEAD.POS_IOU_THR = 0.9
# (mmaction2) Assigner: a proposal whose best IoU is below this is negative.
_C.MODEL.ROI_HEAD.NEG_IOU_THR = 0.9
# (mmaction2) Assigner: a ground truth's best proposals are positive when their IoU is >= this.
_C.MODEL.ROI_HEAD.MIN_POS_IOU = 0.9
# (mmaction2) Sampler: RoIs kept per clip (drawn at random, torch's global RNG, when there are more).
_C.MODEL.ROI_HEAD.SAMPLER_NUM = 32
# (mmaction2) Sampler: largest share of positives among the kept RoIs.
_C.MODEL.ROI_HEAD.SAMPLER_POS_FRACTION = 1.0
# (mmaction2) Sampler: at most this many negatives per positive; -1 = no bound.
_C.MODEL.ROI_HEAD.SAMPLER_NEG_POS_UB = -1
# (mmaction2) Sampler: add the ground-truth boxes to each clip's proposals (as positives).
_C.MODEL.ROI_HEAD.ADD_GT_AS_PROPOSALS = True
# (mmaction2) Weight of positive RoIs in the label weights (train_cfg.rcnn.pos_weight; mmaction2's loss does not read them).
_C.MODEL.ROI_HEAD.POS_WEIGHT = 1.0
# (mmaction2) Test time: an action's score counts as a detection only above this (mmaction2's action_thr); lower scores are set to 0.
_C.MODEL.ROI_HEAD.ACTION_THR = 0.002

# ---------------------------------------------------------------------------
# Sparse R-CNN action detector (MODEL.META_ARCHITECTURE "SparseRCNN", the TubeR fork's; docs/sparse_rcnn.md)
# backbone levels -> temporal pooling -> Conv2d 1x1 + GroupNorm -> learned proposals refined by dynamic
# instance interaction stages; focal classifier over the MODEL.STM.ACTION_CLASSES actions.
# ---------------------------------------------------------------------------
_C.MODEL.SPARSE_RCNN = CN()
# (sparsercnn) Learned proposal boxes / features per clip.
_C.MODEL.SPARSE_RCNN.NUM_PROPOSALS = 300
# (sparsercnn) Width of the proposal features, the projected feature maps and the stages.
_C.MODEL.SPARSE_RCNN.HIDDEN_DIM = 256
# (sparsercnn) Refinement stages (official key NUM_HEADS).
_C.MODEL.SPARSE_RCNN.NUM_STAGES = 6
# (sparsercnn) Attention heads of each stage's self-attention over the proposals.
_C.MODEL.SPARSE_RCNN.NHEADS = 8
# (sparsercnn) Hidden width of each stage's FFN.
_C.MODEL.SPARSE_RCNN.DIM_FEEDFORWARD = 2048
# (sparsercnn) Dropout probability in the stages (attention weights and residual branches).
_C.MODEL.SPARSE_RCNN.DROPOUT = 0.0
# (sparsercnn) FFN activation: "relu" or "gelu".
_C.MODEL.SPARSE_RCNN.ACTIVATION = "relu"
# (sparsercnn) Depth of the classification tower (Linear, LayerNorm, ReLU each).
_C.MODEL.SPARSE_RCNN.NUM_CLS = 1
# (sparsercnn) Depth of the box-regression tower.
_C.MODEL.SPARSE_RCNN.NUM_REG = 3
# (sparsercnn) Parameter sets DynamicConv generates per proposal (2: its two 1x1 convolutions).
_C.MODEL.SPARSE_RCNN.NUM_DYNAMIC = 2
# (sparsercnn) Inner width of the generated convolutions.
_C.MODEL.SPARSE_RCNN.DIM_DYNAMIC = 64
# (sparsercnn) RoIAlign (ROIAlignV2) output size per side (official MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION).
_C.MODEL.SPARSE_RCNN.POOLER_RESOLUTION = 7
# (sparsercnn) RoIAlign sampling points per bin side (official POOLER_SAMPLING_RATIO; 0 = adaptive).
_C.MODEL.SPARSE_RCNN.SAMPLING_RATIO = 2
# (stmixer) Strides in pixels of the levels the head reads (the backbone's last ones, then EXTRA_LEVELS), consecutive powers of 2.
_C.MODEL.SPARSE_RCNN.FEATMAP_STRIDES = [4, 8, 16, 32]
# (tuber fork) Levels added after the backbone's, each a Conv2d 3x3 stride 2 + GroupNorm of the previous one (the fork: 1).
_C.MODEL.SPARSE_RCNN.EXTRA_LEVELS = 0
# (tuber fork) Each level's frames are projected, then reduced over time: "max" (the fork), "mean" or "keyframe" (the middle slice only).
_C.MODEL.SPARSE_RCNN.TEMPORAL_POOL = "max"
# (tuber fork) GroupNorm groups of the per-level input projections.
_C.MODEL.SPARSE_RCNN.PROJ_GN_GROUPS = 32
# (sparsercnn) Weight of the focal class loss and of the class matching cost.
_C.MODEL.SPARSE_RCNN.CLASS_WEIGHT = 2.0
# (sparsercnn) Weight of the GIoU loss and matching cost.
_C.MODEL.SPARSE_RCNN.GIOU_WEIGHT = 2.0
# (sparsercnn) Weight of the L1 loss (image-normalized boxes) and matching cost.
_C.MODEL.SPARSE_RCNN.L1_WEIGHT = 5.0
# (sparsercnn) Supervise every stage (losses loss_*_k of stage k), not only the last.
_C.MODEL.SPARSE_RCNN.DEEP_SUPERVISION = True
# (sparsercnn) Focal loss alpha (loss and matching cost).
_C.MODEL.SPARSE_RCNN.ALPHA = 0.25
# (sparsercnn) Focal loss gamma.
_C.MODEL.SPARSE_RCNN.GAMMA = 2.0
# (tuber fork) Class loss: "focal" (Sparse R-CNN) or "bce" (the fork's SetCriterionAVA: BCE of the sigmoid, matched queries weighted MATCHED_WEIGHT, mean).
_C.MODEL.SPARSE_RCNN.CLASS_LOSS = "focal"
# (tuber fork) "bce" class loss: weight of the matched queries' elements (LOSS_COFS.WEIGHT 10); the others weigh 1.
_C.MODEL.SPARSE_RCNN.MATCHED_WEIGHT = 10.0
# (tuber fork) Matching class cost of a target: "per_target" (its own actions) or "batch_union" (the fork: the union of all the batch's target actions).
_C.MODEL.SPARSE_RCNN.MATCH_CLASS_COST = "per_target"
# (sparsercnn) Prior probability of the classifier's initial bias.
_C.MODEL.SPARSE_RCNN.PRIOR_PROB = 0.01
# (stmixer) Test time: proposals kept per clip, best person score (best action probability) first.
_C.MODEL.SPARSE_RCNN.DETECTIONS_PER_CLIP = 100

# ---------------------------------------------------------------------------
# ACRN shared head of the two-stage detectors (mmaction2's ACRNHead; MODEL.ROI_HEAD.SHARED_HEAD "ACRN")
# ---------------------------------------------------------------------------
_C.MODEL.ROI_HEAD.ACRN = CN()
# Output channels of every ACRN conv, i.e. the bbox head's input width; 0 = the RoI features' channels (mmaction2's SlowFast-R50 config: 2304).
_C.MODEL.ROI_HEAD.ACRN.OUT_CHANNELS = 0
# Spatial stride of ACRN's first (1, 3, 3) conv (1 keeps the feature map's size).
_C.MODEL.ROI_HEAD.ACRN.STRIDE = 1
# Number of (1, 3, 3) conv-norm-act layers after the 1x1x1 one (>= 1).
_C.MODEL.ROI_HEAD.ACRN.NUM_CONVS = 1
# Norm after each ACRN conv: "BN3d" (mmaction2's default) or "none".
_C.MODEL.ROI_HEAD.ACRN.NORM = "BN3d"
# Train the ACRN BatchNorm scale and shift (mmaction2's norm_cfg requires_grad).
_C.MODEL.ROI_HEAD.ACRN.NORM_REQUIRES_GRAD = True
# Activation after each ACRN conv: "ReLU" (mmaction2's default) or "none".
_C.MODEL.ROI_HEAD.ACRN.ACT = "ReLU"

# ---------------------------------------------------------------------------
# Optimization
# ---------------------------------------------------------------------------
_C.SOLVER = CN()
# Iterations that make one epoch (all schedule lengths below are counted in epochs); 0 = the training split's own size: ceil(samples / VIDEOS_PER_BATCH).
_C.SOLVER.ITER_PER_EPOCH = 11524
# Training length in epochs.
_C.SOLVER.MAX_EPOCH = 12
# Learning rate after warm-up, for the whole batch of VIDEOS_PER_BATCH clips.
_C.SOLVER.BASE_LR = 0.0002
# AdamW (beta1, beta2).
_C.SOLVER.BETAS = (0.9, 0.999)
# Weight decay of the parameters that are decayed.
_C.SOLVER.WEIGHT_DECAY = 0.0001
# Weight decay of ResNet BatchNorm parameters.
_C.SOLVER.WEIGHT_DECAY_BN = 0.0
# Learning-rate schedule: "warmup_multi_step" (warm-up x GAMMA at each of STEPS) or "warmup_cosine" (warm-up, then mmengine's CosineAnnealingLR from the warm-up's end to MAX_EPOCH, per iteration).
_C.SOLVER.SCHEDULER = "warmup_multi_step"
# Factor the learning rate is multiplied by at each of STEPS.
_C.SOLVER.GAMMA = 0.1
# Epochs at which the learning rate is multiplied by GAMMA.
_C.SOLVER.STEPS = (5, 8)
# Use a learning-rate warm-up at the start of training.
_C.SOLVER.WARMUP_ON = True
# Learning rate at iteration 0 as a fraction of BASE_LR.
_C.SOLVER.WARMUP_FACTOR = 0.1
# Length of the warm-up, in epochs (may be fractional).
_C.SOLVER.WARMUP_EPOCH = 2
# Warm-up shape: "linear" (reaches 1 at the warm-up's end), "constant", or "mmengine_linear" (mmengine's LinearLR: reaches 1 at the warm-up's last step, one step earlier).
_C.SOLVER.WARMUP_METHOD = "linear"
# (stmixer) Warm-up factor changes only at epoch starts (mmengine's by-epoch LinearLR without convert_to_iter_based); False: every iteration.
_C.SOLVER.WARMUP_BY_EPOCH = False
# (stmixer) "warmup_cosine": learning rate the cosine decays towards (mmengine's eta_min, absolute; not scaled by --auto-scale-lr).
_C.SOLVER.COSINE_ETA_MIN = 0.0
# Save a checkpoint every this many epochs.
_C.SOLVER.CHECKPOINT_PERIOD = 1
# Evaluate on the test split every this many epochs (after EVAL_AFTER).
_C.SOLVER.EVAL_PERIOD = 1
# First epoch after which periodic evaluation runs.
_C.SOLVER.EVAL_AFTER = 2
# Training clips per iteration summed over all processes (each process takes an equal share).
_C.SOLVER.VIDEOS_PER_BATCH = 16
# (stmixer) Gradient accumulation: micro-batches of VIDEOS_PER_BATCH / (processes x this) clips per optimizer step, equal to one step on the whole batch (docs/distributed.md).
_C.SOLVER.GRAD_ACCUM_STEPS = 1
# Optimizer: "adamw" or "sgd" (torch SGD with MOMENTUM and NESTEROV, mmaction2's detectors).
_C.SOLVER.OPTIMIZING_METHOD = "adamw"
# (stmixer) SGD momentum (OPTIMIZING_METHOD "sgd" only).
_C.SOLVER.MOMENTUM = 0.9
# (stmixer) SGD with Nesterov momentum (OPTIMIZING_METHOD "sgd" only; needs MOMENTUM > 0).
_C.SOLVER.NESTEROV = False
# (stmixer) Total training batch (clips over all processes) that BASE_LR is meant for; train_net.py --auto-scale-lr sets BASE_LR x VIDEOS_PER_BATCH / BASE_BATCH_SIZE (mmaction2's auto_scale_lr). 0 = not given.
_C.SOLVER.BASE_BATCH_SIZE = 0
# (stmixer) Mixed precision of training and testing: "off" (float32), "bf16" or "fp16" (with a gradient scaler).
_C.SOLVER.AMP = "off"
# (stmixer) Clip the total gradient norm to this value before each step; 0 disables clipping.
_C.SOLVER.CLIP_GRAD_NORM = 0.0
# (stmixer) AdamW's fused CUDA kernel when every parameter is on a CUDA device (one kernel per step, no per-parameter host work); same update rule.
_C.SOLVER.FUSED_OPTIMIZER = True
# (stmixer) On a NaN/infinite loss term or matching cost: "error" stops naming it and the iteration, "skip" skips that step.
_C.SOLVER.NONFINITE_LOSS = "error"
# (stmixer) Periodic checkpoints kept in OUTPUT_DIR (older ones are deleted; 0 keeps all; model_final is always kept).
_C.SOLVER.CHECKPOINTS_KEPT = 3
# (stmixer) Iterations between metric log lines, metrics.json entries and TensorBoard points.
_C.SOLVER.LOG_PERIOD = 20
# (stmixer) Decay neck/decoder norm scales and biases with WEIGHT_DECAY as the official code does (False: no decay on them).
_C.SOLVER.DECAY_NORM_AND_BIAS = True

# ---------------------------------------------------------------------------
# Testing
# ---------------------------------------------------------------------------
_C.TEST = CN()
# Test clips per iteration summed over all processes.
_C.TEST.VIDEOS_PER_BATCH = 16
# (stmixer) Frame-mAP protocol: "stmixer" (the evaluator copy of the official STMixer/PySlowFast), "activitynet" (2019 challenge code) or "mmaction2" (mmaction2's ava_eval: float32, keyframes without ground truth ignored, mean over classes with detections).
_C.TEST.EVAL_PROTOCOL = "stmixer"
# (stmixer) Refuse suspicious evaluation inputs (boxes outside [0, 1] or inverted, repeated detection rows, videos unknown to the ground truth) instead of logging a warning summary.
_C.TEST.STRICT_EVAL = False
# (stmixer) Recognition: folder to write per-view attention maps to ("" = off; relative to OUTPUT_DIR): <video>_clip<c>_crop<k>.npz (spatial_attention [T, h, w], temporal_attention [T], scores [K]) and .png overlays; needs a head with attention maps (MODEL.RECOGNIZER.HEAD "stabn").
_C.TEST.SAVE_ATTENTION = ""

# ---------------------------------------------------------------------------
# Misc
# ---------------------------------------------------------------------------
# Folder for logs, the merged config, checkpoints and inference results.
_C.OUTPUT_DIR = "."
# (stmixer) Intra-op CPU threads per process; 0 = OMP_NUM_THREADS if set, else cores / processes on the node - DATALOADER.NUM_WORKERS (at least 1).
_C.NUM_THREADS = 0
# (stmixer) torch.backends.cudnn.benchmark for train_net / test_net / demo on CUDA: cuDNN times its algorithms per input shape once, then picks the fastest (its choice may differ between runs: set False for run-to-run identical CUDA results).
_C.CUDNN_BENCHMARK = True
# (stmixer) On CUDA, float32 matrix multiplications (linear layers, attention projections) use TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32), as PyTorch lets cuDNN's convolutions do by default (the official code's backbones run so): 0.71x the ViT-B training step on an H100; results differ from full float32 by ~1e-3 relative, well inside bf16's drift. False: full float32 matmuls (float32 parity runs on CUDA). Applied by train_net / test_net / demo, and by the STMixer detector's forward.
_C.TF32_MATMUL = True
