"""What a sweep trained, as models and data: its trial runs, each as the run of its final stage (the model
bundle it tests) and the manifest it was trained and tested on. `distsleep evaluate --sweep` judges the point
the sweep selected on validation this way: for a cross-validation sweep, every fold's model on its own fold.
"""

from __future__ import annotations

from distsleep.errors import InputError
from distsleep.tracking import FINETUNE_RUN_TAG, KIND_TAG, PRETRAIN_RUN_TAG, client, final_stage_run, sweep_runs

SELECTED_RUN_TAG = "selected_run_id"  # the sweep run's tag naming its selected trial run(s), space-separated
SELECTED_SEED_TAG = "selected_seed"  # a point repeated over seeds: the seed whose trial(s) SELECTED_RUN_TAG names


class SweepLookupError(InputError):
    """A sweep or a trial run that cannot be turned into models and manifests: "<sweep or run>: <why>"."""


def selected_trials(uri: str, sweep: str) -> tuple[str, list[str]]:
    """(label, trial run ids) of the point sweep `sweep` selected on validation: one trial, or the K fold trials
    of a cross-validation point; of a point repeated over seeds, those of its best seed on validation."""
    parents = [r for r in sweep_runs(client(uri), sweep) if r.data.tags.get(KIND_TAG) == "sweep"]
    if not parents:
        raise SweepLookupError(f"sweep {sweep}", f"no sweep of that name in {uri}")
    tags = parents[0].data.tags
    if not tags.get(SELECTED_RUN_TAG):
        raise SweepLookupError(f"sweep {sweep}", f"no point selected ({tags.get('selected_by') or 'it has not finished'}); "
                                                 "name its trial runs with --trial")
    label = tags.get("selected_trial", "")
    if tags.get(SELECTED_SEED_TAG):
        label += f", its seed {tags[SELECTED_SEED_TAG]} (the best of its seeds on validation)"
    return label, tags[SELECTED_RUN_TAG].split()


def trial_models(uri: str, trial_run_ids: list[str]) -> tuple[list[str], list[str]]:
    """(model sources, manifests), one per trial run: the run of its last stage (fine-tuning, else
    pre-training) and the manifest it was trained on (a cross-validation trial's fold manifest)."""
    c = client(uri)
    models, manifests = [], []
    for run_id in trial_run_ids:
        try:
            run = c.get_run(run_id)
        except Exception as error:
            raise SweepLookupError(f"run {run_id}", f"not found in {uri} ({type(error).__name__})") from error
        if run.data.tags.get(KIND_TAG) != "trial":
            raise SweepLookupError(f"run {run_id}", f"not a sweep trial (its {KIND_TAG} tag is "
                                                    f"{run.data.tags.get(KIND_TAG)!r})")
        if run.info.status != "FINISHED":
            raise SweepLookupError(f"run {run_id}", f"the trial is {run.info.status}, not FINISHED: its model is not final")
        stage = final_stage_run(run)
        shards = run.data.params.get("train.shards")
        if not stage or not shards:
            raise SweepLookupError(f"run {run_id}", "the trial names no stage run or manifest (tags "
                                                    f"{FINETUNE_RUN_TAG} / {PRETRAIN_RUN_TAG}, param train.shards)")
        models.append(stage)
        manifests.append(shards)
    return models, manifests
