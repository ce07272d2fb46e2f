"""Orbax checkpoints of train state + data-iterator state + config, and preemption.

One checkpoint per saved step holds three items:
  state:  the NNX train state as a pure dict (model, optimizer, EMA, step, rng)
  data:   the grain iterator state, so a resumed run sees the same next batch
  config: the experiment config as JSON, for provenance
Saving is asynchronous; the training loop keeps running while arrays are written.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

from flax import nnx
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp


def _filled(abstract: nnx.State, pure: dict) -> nnx.State:
    """A fresh copy of the `abstract` container holding the restored arrays of `pure`."""
    state = jax.tree.map(lambda x: x, abstract)
    nnx.replace_by_pure_dict(state, pure)
    return state


class Checkpointer:
    """Thin wrapper over an orbax CheckpointManager rooted at `<workdir>/checkpoints`."""

    def __init__(
        self, workdir: str, *, max_to_keep: int, save_interval_steps: int, async_save: bool = True
    ):
        # Remote workdirs (gs://...) are used as given; local ones are made absolute for orbax.
        root = workdir if "://" in workdir else os.path.abspath(workdir)
        self.directory = os.path.join(root, "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: nnx.State,
        data_iterator: grain.DatasetIterator,
        config: ml_collections.ConfigDict,
        *,
        force: bool = False,
    ) -> bool:
        """Saves if `step` is on the save interval (or `force`); returns whether it did."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
        )
        return self._manager.save(step, args=args, force=force)

    def restore(
        self, step: int, abstract_state: nnx.State, data_iterator: grain.DatasetIterator
    ) -> nnx.State:
        """Restores `step` into arrays laid out like `abstract_state` (shapes + shardings).

        `data_iterator` is moved to the saved position in place.
        """
        abstract_pure = nnx.to_pure_dict(abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_pure),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        return _filled(abstract_state, self._manager.restore(step, args=args)["state"])

    def restore_state(self, step: int, abstract_state: nnx.State) -> nnx.State:
        """Restores only the train state of `step` (no data iterator), e.g. a frozen stage-1 model."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(nnx.to_pure_dict(abstract_state)))
        return _filled(abstract_state, self._manager.restore(step, args=args)["state"])

    def restore_state_part(self, step: int, name: str, abstract_part: nnx.State) -> nnx.State:
        """Restores one top-level entry of the saved train state (e.g. "ema_model"), reading
        only its arrays: a frozen later-stage model need not load optimizer moments or a
        discriminator. `abstract_part` gives that entry's shapes and shardings."""
        item = {name: nnx.to_pure_dict(abstract_part)}
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=item,
                restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True,
            )
        )
        return _filled(abstract_part, self._manager.restore(step, args=args)["state"][name])

    def restore_config(self, step: int) -> ml_collections.ConfigDict:
        """The config saved with `step` (JSON: tuples come back as lists)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
        )
        return ml_collections.ConfigDict(restored["config"])

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


class PreemptionGuard:
    """Turns SIGTERM into a flag the train loop polls, so it can save and exit cleanly.

    Cloud TPU and most schedulers send SIGTERM shortly before preemption. On
    multi-host jobs every host must agree to stop at the same step; orbax's
    `reached_preemption` sync is used there.
    """

    def __init__(self):
        self._event = threading.Event()
        self._previous = None

    def __enter__(self) -> "PreemptionGuard":
        # Across processes, jax.distributed's preemption service holds SIGTERM (installed by
        # jax.distributed.initialize); a Python handler would replace it, and the hosts would
        # never learn of the signal and never stop.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum, frame) -> None:
        del frame
        logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
        self._event.set()

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            # JAX's distributed runtime receives the signal on every host and agrees
            # on one step; a local flag alone would let hosts stop at different steps.
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._event.is_set()
