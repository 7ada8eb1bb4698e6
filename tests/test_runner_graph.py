"""The runner's generic pieces: the dependency tracker, typed calls, the job context
sent once, and the stage classes' declarations."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.runner.deps import Dependencies
from pipeline.runner.stage import Call, Stage
from pipeline.runner.tasks import JobContext, JobRef

pytestmark = pytest.mark.unit


def test_an_item_waits_for_every_key_and_is_released_once():
    deps = Dependencies()
    deps.expect(("decoded", 0))
    deps.expect(("upscaled", 0), 3)
    assert deps.after("encode 0", [("decoded", 0), ("upscaled", 0)]) == []
    assert deps.done(("upscaled", 0)) == []
    assert deps.done(("upscaled", 0)) == []
    assert deps.done(("decoded", 0)) == []  # one region still to come
    assert deps.left(("upscaled", 0)) == 1
    assert deps.done(("upscaled", 0)) == ["encode 0"]
    assert deps.waiting() == 0
    assert deps.done(("upscaled", 0)) == []  # a late tick releases nothing again


def test_keys_already_reached_release_at_once_and_order_is_kept():
    deps = Dependencies()
    assert deps.after("first", ["nothing expected"]) == ["first"]
    deps.expect("encoded", 2)
    deps.expect(("level", 1), 1)
    assert deps.after("assemble", ["encoded"]) == []
    assert deps.after("rename", ["encoded", ("level", 1)]) == []
    assert deps.after("also", ["encoded"]) == []
    assert deps.done("encoded", 2) == ["assemble", "also"]
    assert deps.done(("level", 1)) == ["rename"]


def test_expect_adds_up_and_zero_counts_nothing():
    deps = Dependencies()
    deps.expect("k", 0)
    assert deps.left("k") == 0
    deps.expect("k", 2)
    deps.expect("k", 1)
    assert deps.left("k") == 3
    assert deps.after("x", ["k"]) == []
    assert deps.done("k", 3) == ["x"]


def test_a_call_checks_the_task_type_its_stage_takes():
    @dataclasses.dataclass(frozen=True)
    class Band:
        y0: int

    stage = Stage("ingest", "m:f", takes=Band)
    call = Call(None, stage, Band(0), context="ctx")
    assert call.args == (Band(0), "ctx")
    with pytest.raises(TypeError, match="ingest takes Band"):
        Call(None, stage, (0, 16))


def test_stage_classes_declare_target_task_and_resources(monkeypatch):
    from pipeline.config import load_config
    from pipeline.image.stages import INGEST, PYRAMID, WRITE_OME
    from pipeline.image.tasks import Band, Block
    from pipeline.video.stages import AssembleStage, DecodeStage, EncodeStage, WriteFramesStage
    from pipeline.video.tasks import Assemble, Segment

    monkeypatch.setattr("pipeline.video.stages.cluster_cpus", lambda: 8.0)
    monkeypatch.setattr("pipeline.video.stages.workers_use_gpu", lambda cfg: False)
    cfg = load_config(set_items=["video.encoder_threads=2"])
    decode = DecodeStage.of(cfg)
    assert (decode.name, decode.takes, decode.priority) == ("decode", Segment, 1)
    assert decode.target == "pipeline.video.decode:decode_segment"
    assert DecodeStage.of(cfg, sequence=True).target.startswith("pipeline.video.sequence_in:")
    encode = EncodeStage.of(cfg)
    assert (encode.takes, encode.max_in_flight) == (Segment, 3)  # 8 CPUs // 2 threads - 1
    assert encode.after == ("decode", "upscale")  # of its segment
    assert AssembleStage.of(cfg).takes is Assemble
    assert AssembleStage.of(cfg).after == ("encode",)
    assert WriteFramesStage.of(cfg).name == "encode"
    assert (INGEST.takes, PYRAMID.takes, WRITE_OME.takes) == (Band, Block, Block)
    for stage in (decode, encode, AssembleStage.of(cfg), INGEST, PYRAMID):
        module = stage.target.partition(":")[0]
        assert module.startswith("pipeline."), stage  # no worker code outside stage targets


def test_contexts_are_job_contexts_and_tasks_are_small():
    """What every call of a job shares goes as one JobContext (sent once per job by
    the executor); a task holds only its address."""
    import pickle

    from pipeline.image.tasks import ImageJob
    from pipeline.video.tasks import Segment, VideoJob

    for ctx in (VideoJob, ImageJob, JobRef):
        assert issubclass(ctx, JobContext)
    assert len(pickle.dumps(Segment(12, 1200, 1300))) < 200
