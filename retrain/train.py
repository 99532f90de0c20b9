"""fit(config): the training story, top to bottom.

check the data -> resolve backbone, size and freeze point -> open or resume the run folder ->
build the model (inside a tf.distribute strategy scope) -> phase 1: the head on the frozen
backbone -> phase 2: fine-tune above the freeze point at a lower learning rate -> model.keras.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from retrain import checkpoints as ckpts
from retrain import distribute, schedule
from retrain.backbones import check_alpha, check_image_size, check_weights, get_spec
from retrain.cache import default_cache_dir, open_cache_dir
from retrain.config import FitConfig, default_run_name, parse_duration
from retrain.data import (SHOWN_SKIPPED, ImageFolders, class_weights, describe_ignored, describe_skipped,
                          image_channels, load_folders, steps_per_epoch, undecodable)
from retrain.errors import BackboneError, DatasetError
from retrain.faultpoints import reached
from retrain.files import remove_stale, replacing
from retrain.fileindex import FileIndex
from retrain.inputs import InputPlan
from retrain.plots import write_curves
from retrain.state import TrainingState
from retrain.runs import BestEpoch, best_epoch, checkpoint_prefix, describe_best, history
from retrain.progress import say



# The validation set's size is unknown to Keras (a file that fails to decode is dropped, not
# fatal), so it learns the end of each validation pass by running out, and warns each time.
warnings.filterwarnings("ignore", message="Your input ran out of data")


@dataclass(frozen=True)
class FitResult:
    run: Path
    model_path: Path
    epochs_done: int
    features_computed: int  # bottleneck rows this call computed (0 when all came from the cache)
    best: BestEpoch | None  # the best epoch (lowest validation loss), None if none was validated

    @property
    def best_val_accuracy(self) -> float:
        return self.best.val_accuracy if self.best else float("nan")


@dataclass(frozen=True)
class Hooks:
    """What a caller adds to training: Keras callbacks, and a function that receives progress
    dicts (retrain/callbacks.py, ProgressReport) after every training call and epoch."""

    callbacks: tuple = ()
    on_progress: Callable[[dict], None] | None = None


def fit(config: FitConfig, resume: bool = False, started: float | None = None, hooks: Hooks = Hooks()) -> FitResult:
    """Train (or, with resume, continue) the run `config.runs_dir/config.name`. `started`:
    the `time.monotonic()` that --time-budget counts from (default: now)."""
    started = time.monotonic() if started is None else started
    if config.name is None:
        config = dataclasses.replace(config, name=default_run_name(config.backbone))
    run = Path(config.runs_dir) / config.name
    # Cheap checks first: data, backbone name, size, weights file. No TensorFlow yet.
    spec = get_spec(config.backbone)
    alpha = check_alpha(spec, config.alpha, config.weights)
    image_size = check_image_size(spec, config.image_size)
    check_weights(spec, config.weights)
    if config.weights_path is not None and not config.weights_path.is_file():
        raise BackboneError("the weights file does not exist", config.weights,
                            "pass --weights imagenet, none, or the path of a .h5 file")
    cache_root = Path(config.cache_dir) if config.cache_dir else default_cache_dir(config.data)
    index = FileIndex(open_cache_dir(cache_root, config.data) if config.cache else None)
    facts = {}
    if resume:
        saved, saved_labels, facts = ckpts.read_run(run)
    # The files skipped when the run began stay out of it, so that its epochs stay the same.
    data = load_folders(config.data, config.validation_split, index, keep_out=facts.get("skipped_files") or ())
    if data.skipped:
        say(describe_skipped(data.skipped))
    if data.ignored:
        say(describe_ignored(list(data.ignored)))
    reached("preflight-done")
    if resume:
        ckpts.check_resume(saved, config, saved_labels, data.class_names)
        if facts.get("train_images") not in (None, len(data.train.files)):
            say(f"note: the run began with {facts['train_images']:,} training images and {config.data} now has "
                f"{len(data.train.files):,}: epochs from here differ from an uninterrupted run's")

    if config.distribute == "multi-worker":
        distribute.read_cluster()  # a missing TF_CONFIG is an error before TensorFlow loads

    import tensorflow as tf

    # First of all TensorFlow: MultiWorkerMirroredStrategy must configure the runtime.
    dist = distribute.create(config.distribute)
    import keras

    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    channels = facts.get("channels", 3) if resume else image_channels(data) if spec.channels_follow_data else 3
    if config.distribute != "none":
        say(dist.describe(config.batch_size))
    # The chief writes the run folder; other workers write the same files to a temporary one.
    out = distribute.output_folder(dist, run)
    locks = contextlib.ExitStack()  # the run folder's lock, taken by _train, held to the end
    try:
        trainer = _train(config, resume, run, out, dist, spec, alpha, image_size, channels, data,
                         facts, cache_root, index, started, locks, hooks)
        best = trainer.restore_best()
        with replacing(out / "model.keras", suffix=".keras") as tmp:  # Keras saves to *.keras only
            trainer.model.save(tmp)  # on every worker: saving may take part in collective ops
            reached("model-written")  # the whole model is in the temporary file, not yet in place
        write_curves(out)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as err:
        if not dist.multi_worker:
            raise
        raise distribute.peer_failure(err, run) from err
    finally:
        locks.close()
        if out != run:
            shutil.rmtree(out, ignore_errors=True)
    model_path = run / "model.keras"
    say(f"done: {describe_best(best)}; model saved to {model_path}" + ("" if dist.is_chief else " by the chief"))
    return FitResult(run, model_path, trainer.epochs_done, trainer.cache_computed, best)


def _train(config: FitConfig, resume: bool, run: Path, out: Path, dist, spec, alpha, image_size: int,
           channels: int, data: ImageFolders, facts: dict, cache_root: Path, index: FileIndex,
           started: float, locks: contextlib.ExitStack, hooks: Hooks) -> "_Trainer":
    """Build the model in the strategy's scope and train it, holding the run folder's lock
    (`locks`, which the caller releases); -> the trainer, done."""
    import keras
    import tensorflow as tf

    from retrain import model as models

    with dist.strategy.scope():
        # Build without weights first: a bad freeze point is reported before weights load.
        backbone = models.build_backbone(spec, image_size, alpha, "none", channels)
        layer_names = [layer.name for layer in backbone.layers]
        if not resume:
            count, why = models.resolve_freeze(config.freeze, spec, layer_names,
                                               int(data.train.counts(data.num_classes).min()), config.weights)
            facts = {"image_size": image_size, "freeze_layers": count, "freeze_reason": why,
                     "backbone_layers": len(layer_names), "num_classes": data.num_classes,
                     "channels": channels,
                     "train_images": len(data.train.files),
                     "validation_images": len(data.validation.files),
                     "skipped_files": [os.path.relpath(f, data.root) for f in data.skipped],
                     "deterministic": config.deterministic,
                     "tensorflow": tf.__version__, "keras": keras.__version__}
        say(f"freeze: {facts['freeze_layers']} of {len(layer_names)} backbone layers "
            f"({facts['freeze_reason']})")
        if config.weights == "imagenet" and not spec.is_hub:  # Keras downloads and loads in the builder
            backbone = models.build_backbone(spec, image_size, alpha, config.weights, channels)
        elif config.weights_path is not None:
            models.load_weights_file(backbone, spec, config.weights_path)
        model = models.build_classifier(spec, backbone, data.num_classes, image_size,
                                        config.dropout_rate, config.augment, config.seed)
        if resume and out == run:  # the chief's: the one process that writes the run folder
            locks.enter_context(ckpts.run_lock(run))
            remove_stale(run)  # e.g. the model.keras a killed process was writing
        # Every worker resumes from the chief's run folder (shared storage across hosts).
        prefix = ckpts.latest(run / "ckpt", repair=out == run) if resume else None
        if config.init_from and prefix is None:  # also a resume killed before its first checkpoint
            _init_weights(model, backbone, Path(config.init_from))
        if not resume:  # only now: a bad weights file or --init-from leaves no run behind
            ckpts.create_run(out, config, data.class_names, facts)
            if out == run:
                locks.enter_context(ckpts.run_lock(run))
            reached("run-created")
        # A network trained from scratch has no features worth a head-only phase.
        single_phase = spec.from_scratch and facts["freeze_layers"] == 0
        trainer = _Trainer(config, out, model, backbone, data, image_size, facts["freeze_layers"],
                           cache_root, index, single_phase, dist, started, facts.get(PLANNED), hooks)
        trainer.run(prefix)
    return trainer


def _init_weights(model, backbone, source: Path) -> None:
    import tensorflow as tf

    prefix = ckpts.init_checkpoint(source)
    try:
        status = ckpts.restore_weights(model, backbone, prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise ckpts.CheckpointError("--init-from holds weights of another model", prefix,
                                    "start from a run with the same backbone, size and classes") from err
    status.expect_partial()  # its optimizer is not wanted
    say(f"initialised from {prefix}")


# run.json's record of --time-budget's plan: phase 2's epochs, fixed once phase 2 begins.
PLANNED = "fine_tune_epochs_planned"


class _Trainer:
    """The two phases and their checkpoints, resumable from any epoch or step."""

    # Phase 1's checkpoints: its head's layers, the backbone once in frozen/ (retrain/checkpoints.py).
    # False: the whole model each time, as runs made before 2026-12-02 wrote them.
    writes_head_only = True

    def __init__(self, config: FitConfig, run: Path, model, backbone, data: ImageFolders,
                 image_size: int, freeze_layers: int, cache_root: Path, index: FileIndex,
                 single_phase: bool = False, dist: distribute.Distribution | None = None,
                 started: float | None = None, planned: int | None = None, hooks: Hooks = Hooks()):
        self.hooks = hooks
        self.config, self.run_dir, self.model, self.backbone = config, run, model, backbone
        self.data, self.image_size, self.freeze_layers = data, image_size, freeze_layers
        self.dist = dist or distribute.create("none")
        # Datasets are batched by the global batch; the strategy splits it among the replicas.
        self.batch_size = config.batch_size * self.dist.replicas
        self.steps = steps_per_epoch(data.train, self.batch_size)
        self.single_phase = single_phase
        self.inputs = InputPlan(config, model, backbone, data, image_size, freeze_layers, cache_root, index,
                                self.batch_size, self.fine_tunes)
        self.training_state = TrainingState(model)
        self.state, self.seed_vars = self.training_state.variables, self.training_state.seeds
        self.epochs_done = 0
        self.started = time.monotonic() if started is None else started  # --time-budget counts from it
        self.planned = planned  # phase 2's epochs as --time-budget planned them (run.json), or None
        self.head_only = self.writes_head_only  # this run's phase-1 checkpoints: set by run()

    @property
    def fine_tunes(self) -> bool:
        """Whether a phase 2 follows phase 1."""
        return not self.single_phase and self.freeze_layers < len(self.backbone.layers) \
            and self.config.fine_tune_epochs > 0

    @property
    def cache_computed(self) -> int:
        return self.inputs.computed

    @property
    def fine_tune_epochs(self) -> int:
        return self.config.fine_tune_epochs if self.planned is None else self.planned

    def run(self, prefix: str | None) -> None:
        # Resume decision order:
        # 1. no checkpoint: phase 1 from epoch 0;
        # 2. a phase-1 checkpoint: restore it into phase 1 (its optimizer), then go on in
        #    phase 1, or switch to phase 2 if phase 1's epochs are done;
        # 3. a phase-2 checkpoint: switch to phase 2 as an uninterrupted run would (unfreeze,
        #    recompile with a fresh optimizer), then restore it. Restoring a phase-1 optimizer
        #    into phase 2 would bring back phase 1's learning rate and step count.
        state = TrainingState.saved_in(prefix)
        # Phase 1 writes head-only checkpoints, unless it resumes one made before they existed.
        resumes_whole = bool(state and state["phase"] == 1 and not ckpts.is_head_only(prefix))
        self.head_only = self.writes_head_only and not self.single_phase and not resumes_whole
        if self.config.time_budget is not None and not self.fine_tunes:
            say(f"--time-budget {self.config.time_budget}: no fine-tuning follows, nothing to plan; "
                f"phase 1's {self.config.epochs} epochs run as given")
        if state:
            say(f"resuming {self.run_dir} from {Path(prefix).name}: phase {state['phase']}, "
                f"{state['epoch']} epochs and {state['step']} steps done")
        # Rows written after the checkpoint (the CSV logger runs before the saver) go.
        ckpts.truncate_history(self.run_dir / "history.csv", state["epoch"] if state else 0)
        self.epochs_done = state["epoch"] if state else 0
        if state:  # the weights first: the cache below is filled by them, and keyed by what they came from
            ckpts.restore_weights(self.model, self.backbone, prefix).expect_partial()
        if state is None or state["phase"] == 1:
            start, step = (state["epoch"], state["step"]) if state else (0, 0)
            self._compile(1, 0 if self.single_phase else self.backbone_layers,
                          *schedule.head_rate(self.config, self.steps, self.single_phase))
            if state is None and self.head_only:  # phase 1 from its start: on every worker alike
                ckpts.save_frozen(self.run_dir, self.backbone)
                reached("frozen-saved")
            if state:  # the weights are in (above); this brings the optimizer and the state
                self.checkpoint.restore(prefix).assert_existing_objects_matched()
            phase1_end = max(self.config.epochs, start + (1 if step else 0))
            self._fit(0, start, phase1_end, step)
        else:
            phase1_end = state["phase_start"]
        if not self.fine_tunes:
            return
        reached("phase-switch")
        self._compile(2, self.freeze_layers, self.config.fine_tune_learning_rate)
        start, step = phase1_end, 0
        if state and state["phase"] == 2:
            self.checkpoint.restore(prefix).assert_existing_objects_matched()
            start, step = state["epoch"], state["step"]
        self._fit(phase1_end, start, phase1_end + self.fine_tune_epochs, step)

    @property
    def backbone_layers(self) -> int:
        return len(self.backbone.layers)

    def _compile(self, phase: int, frozen: int, learning_rate: float, how: str = "") -> None:
        import keras
        import tensorflow as tf

        from retrain.model import set_frozen

        set_frozen(self.backbone, frozen)
        phase_inputs = self.inputs.compute_or_reuse(phase, frozen)  # heavy on a cold cache
        self.trainee, self.train_data, self.val = phase_inputs.trainee, phase_inputs.train_data, phase_inputs.val
        if phase == 2 and self.config.time_budget is not None:
            self._plan_fine_tuning(learning_rate)
        metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
        if self.data.num_classes > 5:
            metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5_accuracy"))
        # On cached rows a step is tiny and Keras' per-step Python dominates: run a whole
        # epoch per call, one tf.while_loop (not with --save-every-steps, whose hooks need
        # every step). A call must not run past the epoch's end, hence exactly one epoch.
        # Measured: 10 epochs of a 1280 -> 10 head, 40,000 rows, batch 64: 14.1 s at 5 steps
        # per call, 11.3 s at one epoch per call.
        per_call = 1
        if self.trainee is not self.model and not self.config.save_every_steps:
            per_call = distribute.steps_per_execution(self.dist, self.steps)
        epochs = self.config.epochs if phase == 1 else self.fine_tune_epochs
        self.trainee.compile(optimizer=schedule.optimizer(self.config, learning_rate, epochs, self.steps),
                             loss=schedule.loss(self.config), metrics=metrics, steps_per_execution=per_call)
        distribute.prepare_model(self.trainee, self.dist)
        self.trainee.optimizer.build(self.trainee.trainable_variables)  # so a restore fills it now
        self.state["phase"].assign(phase)
        weights = {ckpts.HEAD: ckpts.head_layers(self.model, self.backbone)} if phase == 1 and self.head_only \
            else {"model": self.model}  # see retrain/checkpoints.py
        self.checkpoint = self.training_state.checkpoint(weights, self.trainee.optimizer)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.run_dir / "ckpt"),
                                                  max_to_keep=self.config.keep_checkpoints)
        self.best = tf.train.CheckpointManager(self.checkpoint, str(self.run_dir / "best"), max_to_keep=1)
        trainable = sum(int(np.prod(v.shape)) for v in self.trainee.trainable_variables)
        say(schedule.describe(self.config, phase, trainable, learning_rate, how))

    def _plan_fine_tuning(self, learning_rate: float) -> None:
        """Set phase 2's epochs from --time-budget: the plan run.json holds, else a new one
        from a few timed steps (retrain/budget.py), recorded before phase 2's first epoch."""
        if self.planned is not None:
            say(f"phase 2: {self.planned} fine-tuning epochs, as --time-budget planned when the run "
                f"began phase 2 ({self.run_dir / 'run.json'})")
            return
        import keras

        from retrain import budget

        cost = budget.measure(self.trainee, self.model, keras.optimizers.Adam(learning_rate), schedule.loss(self.config),
                              self.train_data(0, 1), self.val, self.steps, len(self.data.validation.files))
        left = parse_duration(self.config.time_budget) - (time.monotonic() - self.started)
        self.planned = budget.plan_epochs(left, cost, self.config.fine_tune_epochs)
        line = budget.describe(self.config.time_budget, left, cost, self.planned, self.config.fine_tune_epochs)
        ckpts.record_facts(self.run_dir, {PLANNED: self.planned, "time_budget_plan": line})
        say(f"phase 2: {line}")

    def _callbacks(self, step: int, end: int) -> list:
        """Ours for a fit call ending at epoch `end` whose first epoch has `step` steps done,
        then the caller's (Hooks)."""
        import keras

        from retrain.callbacks import CheckpointSaver, CompleteResumedEpoch, EpochSeeds, ProgressReport

        before = step * self.batch_size
        complete = [CompleteResumedEpoch(self.state["partial_logs"].numpy(), before,
                                         len(self.data.train.files) - before)] if step else []
        ours = complete + [keras.callbacks.CSVLogger(str(self.run_dir / "history.csv"), append=True),
                           keras.callbacks.TensorBoard(str(self.run_dir / "logs"), write_graph=False),
                           EpochSeeds(self.seed_vars, self.config.seed, skip_first=bool(step)),
                           CheckpointSaver(self.state, self.manager, self.best, self.steps,
                                           self.config.save_every_steps, step, self._epoch_saved)]
        if self.hooks.on_progress is not None:
            epochs = self.config.epochs + (self.fine_tune_epochs if self.fine_tunes else 0)
            ours.append(ProgressReport(self.hooks.on_progress, int(self.state["phase"].numpy()), epochs, end,
                                       self.steps, step))
        return ours + list(self.hooks.callbacks)

    def _epoch_saved(self, epochs_done: int) -> None:
        self.epochs_done = epochs_done

    def _fit(self, phase_start: int, start: int, end: int, step: int) -> None:
        """Epochs [start, end) of the compiled phase; `step` steps of `start` are already done."""
        import tensorflow as tf

        if start >= end:
            return
        self.state["phase_start"].assign(phase_start)
        weights = class_weights(self.data.train, self.data.num_classes) \
            if self.config.class_weight == "auto" else None
        verbose = 1 if sys.stdout.isatty() else 2
        try:
            self._fit_epochs(start, end, step, weights, verbose)
        except tf.errors.InvalidArgumentError as err:  # an image the pre-flight check passed did not decode
            bad = [f for split in (self.data.train, self.data.validation)
                   for f in undecodable(split, self.image_size, self.inputs.channels)]
            if not bad:
                raise
            raise DatasetError(f"{len(bad)} image(s) passed the pre-flight check but TensorFlow cannot decode them",
                               ", ".join(bad[:SHOWN_SKIPPED]), "replace or remove them, then continue with "
                               f"`retrain fit --resume {self.run_dir}`") from err

    def _fit_epochs(self, start: int, end: int, step: int, weights, verbose: int) -> None:
        if step:  # finish the interrupted epoch on its own, then the rest
            ds = self.train_data(start, start + 1, step)
            self.trainee.fit(ds, steps_per_epoch=self.steps - step, epochs=start + 1, initial_epoch=start,
                           validation_data=self.val, class_weight=weights, shuffle=False,
                           callbacks=self._callbacks(step, end), verbose=verbose)
            start += 1
        if start < end:
            ds = self.train_data(start, end)
            self.trainee.fit(ds, steps_per_epoch=self.steps, epochs=end, initial_epoch=start,
                           validation_data=self.val, class_weight=weights, shuffle=False,
                           callbacks=self._callbacks(0, end), verbose=verbose)

    def restore_best(self) -> "BestEpoch | None":
        """Put the best epoch's weights into the model, the weights model.keras keeps (as Keras'
        EarlyStopping(restore_best_weights=True) does); -> that epoch, None if none was logged."""
        prefix = checkpoint_prefix(self.run_dir / "best")  # just written: its pointer, no re-read to check it
        if prefix is not None:  # phase 2 changes the backbone; a run that ends in phase 1 has frozen/'s
            unchanged = int(self.state["phase"].numpy()) == 1 and self.head_only
            ckpts.restore_weights(self.model, self.backbone, prefix, backbone_is_frozen=unchanged).expect_partial()
        return best_epoch(history(self.run_dir))
