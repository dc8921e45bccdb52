"""engine.inference.predict: detections per dataset index, and one warning for clips with non-finite outputs."""

import logging

import torch
from torch import nn

from stmixer.engine.inference import predict


class FixedDetector(nn.Module):
    """Returns, per clip, one box and two scores; clip ``bad`` (its position in the batch) gets NaN scores."""

    def __init__(self, bad=None):
        super().__init__()
        self.bad = bad

    def forward(self, slow, fast, whwh):
        out = []
        for i in range(slow.size(0)):
            scores = torch.tensor([[0.25, 0.75]])
            if i == self.bad:
                scores = scores * float("nan")
            out.append({"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.6]]), "scores": scores})
        return out


def loader(batches=2, clips=2):
    for k in range(batches):
        yield {
            "videos": [torch.zeros(clips, 3, 1, 4, 4)],
            "whwh": torch.ones(clips, 4),
            "boxes": [torch.zeros(0, 4)] * clips,
            "labels": [torch.zeros(0, 2)] * clips,
            "metadata": [{"video_id": f"v{k}", "timestamp": 900 + i} for i in range(clips)],
            "indices": torch.arange(k * clips, (k + 1) * clips),
        }


def test_predict_keeps_every_clip_and_is_quiet_on_finite_outputs(caplog):
    with caplog.at_level(logging.WARNING, logger="stmixer.engine.inference"):
        records = predict(FixedDetector(), loader(), torch.device("cpu"), progress=False)
    assert sorted(records) == [0, 1, 2, 3]
    assert records[3]["video_id"] == "v1" and records[3]["timestamp"] == 901
    assert records[0]["scores"].tolist() == [[0.25, 0.75]]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_non_finite_scores_give_one_warning_naming_the_first_clip(caplog):
    with caplog.at_level(logging.WARNING, logger="stmixer.engine.inference"):
        records = predict(FixedDetector(bad=1), loader(), torch.device("cpu"), progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 of 4 clips have non-finite") and "first v0@901" in warnings[0]
    assert len(records) == 4  # the detections are kept as they are
