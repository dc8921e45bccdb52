"""``MODEL.TUBER.DETR_WEIGHT``: DETR weights into TubeR's transformer, queries and box MLP.

TubeR (``utils/model_utils.py`` ``load_detr_weights``) starts its AVA training from a DETR checkpoint:
it copies ``transformer.*``, ``bbox_embed.*`` and the first ``QUERY_NUM`` rows of ``query_embed.weight``,
and ignores the rest (COCO classifier, 2-D ``input_proj``, ResNet backbone). Here the file is read by
``stmixer.checkpoint`` (format ``detr``: COCO ``detr-r50-*.pth`` or TubeR's ``detr.pth``, with or without
a ``module.`` prefix), mapped below ``tuber_head.``, the queries cut to the model's count, and loaded with
the usual load table; every other model key keeps its value (reported as not stored).

TubeR's loader selects keys by their *second* dotted component, so it only loads files whose keys carry
a ``module.`` prefix (TubeR's own ``detr.pth``); on the COCO DETR release (no prefix) it silently loads
nothing. This loader takes both layouts (a silent no-op is not reproduced).

JHMDB / UCF101-24 head (``MODEL.TUBER.HEAD "frame"``, ``query_frames`` F > 1): TubeR's loader copies the first
``QUERY_NUM`` DETR queries into the ``[QUERY_NUM * TEMP_LEN, D]`` ``query_embed`` and crashes
(``load_state_dict`` size mismatch); here DETR's queries are not loaded for such a head (reported as dropped;
the per-frame queries keep their initialization), the transformer and the box MLP are.
"""

import dataclasses
import logging

from ...checkpoint import CheckpointFormatError, load_weights, read_checkpoint
from ...checkpoint.loader import unwrap_model

logger = logging.getLogger(__name__)

QUERY_KEY = "tuber_head.query_embed.weight"


def load_detr_weights(model, path, log=logger):
    """Load the DETR file ``path`` into a ``TubeR`` model; returns the ``LoadReport``.

    Raises:
        CheckpointFormatError: the file is not DETR weights (naming ``MODEL.TUBER.DETR_WEIGHT``).
        CheckpointMismatchError: a DETR tensor does not fit (e.g. another width or fewer queries than
            ``MODEL.TUBER.NUM_QUERIES``), with the table.
    """
    contents = read_checkpoint(path)
    if contents.format != "detr":
        raise CheckpointFormatError(
            f"MODEL.TUBER.DETR_WEIGHT = {path}: expected DETR weights (keys transformer.*, query_embed.weight, "
            f"bbox_embed.*), found a {contents.description or contents.format}; a whole TubeR checkpoint goes to "
            "MODEL.WEIGHT")
    state = dict(contents.state_dict)
    dropped = {r: list(v) for r, v in contents.dropped.items()}
    model_state = unwrap_model(model).state_dict()
    head = getattr(unwrap_model(model), "tuber_head", None)
    if QUERY_KEY in state and getattr(head, "query_frames", 1) > 1:  # TubeR crashes here (module docstring)
        dropped["query_embed (the per-frame queries of MODEL.TUBER.HEAD \"frame\" keep their initialization)"] = [
            QUERY_KEY]
        del state[QUERY_KEY]
    if QUERY_KEY in state and QUERY_KEY in model_state:
        q = model_state[QUERY_KEY].shape[0]
        if state[QUERY_KEY].shape[0] > q:  # TubeR keeps the first QUERY_NUM queries
            rows = state[QUERY_KEY].shape[0]
            state[QUERY_KEY] = state[QUERY_KEY][:q]
            dropped[f"query_embed rows {q}..{rows - 1} (TubeR keeps the first MODEL.TUBER.NUM_QUERIES)"] = [QUERY_KEY]
    not_in_detr = frozenset(k for k in model_state if k.startswith("tuber_head.") and k not in state)
    contents = dataclasses.replace(contents, state_dict=state, dropped=dropped,
                                   expected_missing=contents.expected_missing | not_in_detr)
    return load_weights(model, contents, log=log)
