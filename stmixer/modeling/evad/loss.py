"""EVAD's action loss: binary cross-entropy of every decoder block's action logits on the matched queries.

Official ``EVADRoIHead.action_cls_loss`` (``projects/evad/models/head_helper.py``, ``MODEL.LOSS_FUNC bce``,
``SOFTMAX_POSE False``): the queries matched to ground-truth persons by the person detector's *last* stage
(Hungarian matching of the set criterion) are classified against their persons' multi-hot actions with
``binary_cross_entropy_with_logits`` (mean over the matched queries and the classes) for each decoder block;
each term is multiplied by the action weight (zoo: 12).
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F


def evad_action_losses(action_logits, indices, gt_labels, weight):
    """Weighted action losses of every decoder block.

    Args:
        action_logits: list (one per decoder block, last = final) of ``[B, P, A]`` logits.
        indices: per clip ``(query_index [m_i], target_index [m_i])`` int64, the last person stage's matching.
        gt_labels: per clip ``[n_i, A]`` multi-hot actions.
        weight: the action loss weight.

    Returns:
        ordered dict ``loss_bce_0 .. loss_bce_{L-2}`` (the first L-1 blocks), then ``loss_bce`` (the last block),
        each ``weight * BCE`` (official names and order).
    """
    batch = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query = torch.cat([q for q, _ in indices])
    dtype = action_logits[-1].dtype
    targets = torch.cat([labels[j].to(dtype) for labels, (_, j) in zip(gt_labels, indices)])
    batch, query = batch.to(targets.device), query.to(targets.device)
    losses = OrderedDict()
    last = len(action_logits) - 1
    for i, logits in enumerate(action_logits):
        name = "loss_bce" if i == last else f"loss_bce_{i}"
        losses[name] = weight * F.binary_cross_entropy_with_logits(logits[batch, query], targets)
    return losses
