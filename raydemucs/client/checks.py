"""What the client checks before anything is queued: what the tasks of one call share (options,
model and its pool, output directory, webhook), checked once into a `TaskTemplate`, then each
input and its names (`TaskChecks.spec`). A batch of 100,000 checks its options once, not 100,000
times. Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

from ..audio.checks import validate_input
from ..core.config import Config, SeparationConfig, coerce
from ..core.errors import InputTooLarge, InvalidInput, ModelNotFound
from ..core.names import check_task_names, name_from_filename
from ..core.pools import route
from ..core.task import TaskSpec, new_task_id, parse_priority
from ..ensembles.plan import first_model
from ..ensembles.spec import check_models, check_options, ensemble_of
from ..models.catalogue import check_model_name, check_two_stems, model_source
from ..storage import uris
from ..storage.folders import check_writable, file_sha256, task_folder
from ..storage.uris import is_uri, local_path
from ..webhooks.targets import check_events, check_url

OPTION_ALIASES = {"name": "model", "stem": "two_stems"}


@dataclasses.dataclass(frozen=True)
class TaskTemplate:
    """What every task of one submit shares (see `TaskChecks.template`)."""

    config: Config
    separation: SeparationConfig
    output_dir: str
    force: bool
    timeout_s: float | None
    cache: bool
    upload: bool
    batch_id: str | None
    webhook_url: str | None
    webhook_events: tuple[str, ...]
    ensemble: dict | None = None


class TaskChecks:
    """Checks against `config()` (the running service's config when there is one: its defaults
    and limits apply, else the client's own); `held_models()` gives the models the running
    service's workers hold, with their stems where known. What was found once (a model's
    source, a writable output directory) is not checked again."""

    def __init__(self, config: Callable[[], Config],
                 held_models: Callable[[], dict[str, list[str] | None]]):
        self.config, self.held_models = config, held_models
        self._models_found: set[tuple[str, str | None]] = set()
        self._outputs_writable: set[str] = set()

    def template(self, output_dir: str | os.PathLike | None = None, force: bool = False,
                      timeout_s: float | None = None, cache: bool = True, upload: bool = False,
                      batch_id: str | None = None, webhook_url: str | None = None,
                      webhook_events=None, preset: str | None = None,
                      ensemble: dict | None = None, **options) -> TaskTemplate:
        """What the tasks of one call share, checked once: options, model and pool, output
        directory, webhook; nothing is read or written."""
        config = self.config()
        checked = {}
        for key, value in options.items():
            key = OPTION_ALIASES.get(key, key)
            checked[key] = coerce("separation", key, value, "option")
        separation = config.separation.model_copy(update=checked)
        if separation.repo:
            separation = separation.model_copy(
                update={"repo": str(Path(separation.repo).expanduser().absolute())})
        ensemble = ensemble_of(config.ensembles, preset, ensemble)
        if ensemble:
            separation = self._ensemble(config, separation, ensemble)
        model = check_model_name(separation.model, separation.repo, config.models)
        route(config.worker_pools(), separation.model, separation.device,
              separation.precision, model.architecture)  # no pool, or one that cannot run it
        if separation.two_stems is not None:  # judged here when the catalogue or workers know it
            check_two_stems(separation.two_stems, separation.model,
                            self.held_models().get(separation.model) or model.stems)
        if upload:
            output_dir = "uploaded"  # the service puts the stems under its state directory
        else:
            output_dir = str(output_dir or config.service.output_dir)
            output_dir = output_dir if is_uri(output_dir) else str(local_path(output_dir))
        webhook_events = check_events(webhook_events)
        if webhook_url is not None:
            check_url(webhook_url)
        if timeout_s is not None:
            timeout_s = coerce("tasks", "timeout_s", timeout_s, "option")
        return TaskTemplate(config, separation, output_dir, force, timeout_s, cache, upload,
                            batch_id, webhook_url, webhook_events, ensemble)

    def _ensemble(self, config: Config, separation: SeparationConfig,
                  ensemble: dict) -> SeparationConfig:
        """The options of an ensemble task (its first part's model), once every part's model
        exists, a pool serves it and makes the stems the ensemble reads (where known)."""
        check_options(ensemble, separation.two_stems)
        held, served = self.held_models(), {}
        for part in ensemble["parts"]:
            model = check_model_name(part["model"], separation.repo, config.models)
            route(config.worker_pools(), part["model"], separation.device, separation.precision,
                  model.architecture)
            served[part["model"]] = held.get(part["model"]) or model.stems
        check_models(ensemble, served)
        return separation.model_copy(update={"model": first_model(ensemble)})

    def spec(self, template: TaskTemplate, input_path: str | os.PathLike,
                  file_id: str | None, project_name: str, priority: str | int) -> TaskSpec:
        """One input's spec from its call's template, after the checks of the input, its names
        and (once per call) the model's source and the output directory."""
        config, output_dir, upload = template.config, template.output_dir, template.upload
        source, duration_s = self._input(str(input_path), config, upload)
        file_id = file_id if file_id is not None else name_from_filename(
            Path(source.rsplit("/", 1)[-1]).stem)
        if upload:
            check_task_names(project_name, file_id)
        else:
            task_folder(output_dir, project_name, file_id, config.storage)  # names, symlinks
        priority = parse_priority(priority)
        separation = template.separation
        for model in [part["model"] for part in (template.ensemble or {}).get("parts", ())] or [
                separation.model]:
            self._model_source(model, separation.repo, config)
        if not upload and output_dir not in self._outputs_writable:
            check_writable(output_dir, config.storage)
            self._outputs_writable.add(output_dir)
        local = not (is_uri(source) or is_uri(output_dir) or upload)
        cache = template.cache and local
        return TaskSpec(task_id=new_task_id(), project=project_name, file_id=file_id,
                        input_path=source, output_dir=output_dir,
                        priority=priority, options=separation, force=template.force,
                        timeout_s=template.timeout_s, cache=cache, uploaded=upload, kept=upload,
                        duration_s=duration_s, batch_id=template.batch_id,
                        webhook_url=template.webhook_url, webhook_events=template.webhook_events,
                        ensemble=template.ensemble,
                        input_sha256=None if is_uri(source) or not (template.cache or upload)
                        else file_sha256(Path(source)))

    @staticmethod
    def _input(location: str, config: Config, upload: bool) -> tuple[str, float | None]:
        """The input as the spec names it and its duration (None for a URI: not decoded here),
        after the checks possible from here."""
        if not is_uri(location):
            path = local_path(location)
            return str(path), validate_input(path, config.input)
        if upload:
            raise InvalidInput(f"--upload sends a local file; {location} is already in storage")
        size = uris.input_size(location, config.storage)
        if size > config.input.max_file_mb * 2**20:
            raise InputTooLarge(f"input {location} is {size / 2**20:.1f} MB, over the "
                               f"{config.input.max_file_mb:g} MB limit (input.max_file_mb)")
        return location, None

    def _model_source(self, name: str, repo: str | None, config: Config) -> None:
        """Refuse a model the workers could not load: not in a local cache and not downloadable
        from here (offline), unless the running service's workers already hold it."""
        if (name, repo) in self._models_found:
            return
        try:
            model_source(name, repo, models=config.models)
        except ModelNotFound:
            if name not in self.held_models():
                raise
        self._models_found.add((name, repo))
