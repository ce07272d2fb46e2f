"""A run of several trainers in order, each in its own sub-directory of the workdir.

The config holds `stages`, an ordered mapping from stage name to a full trainer
config (tokenizer, maskgit, ...). A string value "@<stage>" anywhere in a
stage's config is replaced by that earlier stage's workdir, which is how a
video tokenizer names the image run it inflates and a transformer names its
frozen tokenizer. Each stage resumes like a single run; a stage whose final
checkpoint and evaluation exist is not run again.
"""

from __future__ import annotations

import json
import logging
import os

from etils import epath
import ml_collections

from videogen import checkpoint, trainers

_REFERENCE = "@"


def stage_workdir(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)


def resolve_references(
    config: ml_collections.ConfigDict, workdir: str, done: list[str]
) -> ml_collections.ConfigDict:
    """A copy of `config` with every "@<stage>" string replaced by that stage's workdir."""
    resolved = ml_collections.ConfigDict(config.to_dict())

    def visit(node: ml_collections.ConfigDict, path: str) -> None:
        for key in list(node.keys()):
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                visit(value, f"{path}{key}.")
            elif isinstance(value, str) and value.startswith(_REFERENCE):
                name = value[len(_REFERENCE) :]
                if name not in done:
                    raise ValueError(
                        f"{path}{key}={value!r} names stage {name!r}, which does not run before "
                        f"this one (earlier stages: {done}); reference an earlier stage."
                    )
                node[key] = stage_workdir(workdir, name)

    visit(resolved, "")
    return resolved


def _trainer(config: ml_collections.ConfigDict):
    return trainers.trainer_module(config.trainer)


def _finished_metrics(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """The final evaluation of a completed stage, or None if the stage must (still) run."""
    checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=1, save_interval_steps=1)
    try:
        latest = checkpointer.latest_step()
    finally:
        checkpointer.close()
    report = epath.Path(workdir) / f"eval_step{config.num_train_steps:07d}.json"
    if latest != config.num_train_steps or not report.exists():
        return None
    return json.loads(report.read_text())


def _stages(config: ml_collections.ConfigDict, workdir: str):
    done: list[str] = []
    for name in config.stage_order:
        if name not in config.stages:
            raise ValueError(
                f"stage_order names {name!r} but config.stages has {sorted(config.stages)}."
            )
        stage_dir = stage_workdir(workdir, name)
        yield name, resolve_references(config.stages[name], workdir, done), stage_dir
        done.append(name)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> dict[str, dict]:
    """Runs every stage in order; returns each stage's final evaluation metrics.

    A stage that ends before its last step (SIGTERM, or `stop_at_step`, which each stage
    receives as a preemption would) ends the run there: a later stage would read an
    unfinished one (a generator tokenizing with a half-trained tokenizer). The returned
    mapping then stops at that stage; the same command resumes it.
    """
    results = {}
    for name, stage, stage_dir in _stages(config, workdir):
        finished = _finished_metrics(stage, stage_dir)
        if finished is not None:
            logging.info("Stage %s is complete in %s; not running it again.", name, stage_dir)
            print(f"videogen: stage {name} already complete in {stage_dir}.")
            results[name] = finished
            continue
        print(f"videogen: stage {name} ({stage.trainer} trainer) in {stage_dir}")
        result = _trainer(stage).train_and_evaluate(stage, stage_dir, stop_at_step=stop_at_step)
        results[name] = result.eval_metrics
        if result.step < stage.num_train_steps:
            print(
                f"videogen: stage {name} stopped at step {result.step} of "
                f"{stage.num_train_steps}; the later stages did not run. Run the same command "
                "again to resume."
            )
            break
    return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
    """`--mode=eval`: every stage's latest checkpoint evaluated again."""
    return {
        name: _trainer(stage).evaluate_checkpoint(stage, stage_dir)
        for name, stage, stage_dir in _stages(config, workdir)
    }


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str):
    """`--mode=sample`: samples of the last stage that can sample (a generator)."""
    samplers = [
        (stage, stage_dir)
        for _, stage, stage_dir in _stages(config, workdir)
        if hasattr(_trainer(stage), "sample_checkpoint")
    ]
    if not samplers:
        raise ValueError(
            f"no stage of {list(config.stage_order)} can sample; --mode=sample needs a "
            "generator stage (e.g. maskgit)."
        )
    stage, stage_dir = samplers[-1]
    return _trainer(stage).sample_checkpoint(stage, stage_dir)
