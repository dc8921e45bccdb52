"""EVAD's action loss: binary cross-entropy of every decoder block's action logits on the matched queries.

Official ``EVADRoIHead.action_cls_loss`` (``projects/evad/models/head_helper.py``, ``MODEL.LOSS_FUNC bce``,
``SOFTMAX_POSE False``): the queries matched to ground-truth persons by the person detector's *last* stage
(Hungarian matching of the set criterion) are classified against their persons' multi-hot actions with
``binary_cross_entropy_with_logits`` (mean over the matched queries and the classes) for each decoder block;
each term is multiplied by the action weight (zoo: 12).
"""

from collections import OrderedDict

import torch.nn.functional as F


def evad_action_losses(action_logits, batch_index, query_index, target_actions, weight):
    """Weighted action losses of every decoder block.

    Args:
        action_logits: list (one per decoder block, last = final) of ``[B, P, A]`` logits.
        batch_index, query_index: ``[m]`` int64, the clip and query of each matched pair (the last person
            stage's matching).
        target_actions: ``[m, A]`` multi-hot actions of the matched persons (any numeric dtype).
        weight: the action loss weight.

    Returns:
        ordered dict ``loss_bce_0 .. loss_bce_{L-2}`` (the first L-1 blocks), then ``loss_bce`` (the last block),
        each ``weight * BCE`` (official names and order). With no matched pair the terms are 0 (the official
        mean over an empty set is NaN).
    """
    targets = target_actions.to(action_logits[-1].dtype)
    losses = OrderedDict()
    last = len(action_logits) - 1
    for i, logits in enumerate(action_logits):
        name = "loss_bce" if i == last else f"loss_bce_{i}"
        picked = logits[batch_index, query_index]
        if picked.numel():
            losses[name] = weight * F.binary_cross_entropy_with_logits(picked, targets)
        else:
            losses[name] = picked.sum() * 0.0
    return losses
