"""What an HTTP request asks for, as a `TaskSpec`: its fields checked one by one, each refusal a
one-line `InvalidInput` naming the field."""
from __future__ import annotations

import json
from pathlib import PurePosixPath

from ..core.config import Config, SeparationConfig, coerce
from ..core.errors import InvalidInput
from ..core.names import check_task_names, name_from_filename, printable
from ..core.public import OPTION_FIELDS
from ..core.task import TaskSpec, new_task_id, parse_priority
from ..ensembles.plan import first_model
from ..ensembles.spec import check_models, check_options, ensemble_of
from ..models.catalogue import check_two_stems
from ..webhooks.targets import check_events, check_url

TASK_FIELDS = ("project", "file_id", "priority", "force", "webhook_url", "webhook_events", "preset",
               "ensemble")
FIELDS = (*TASK_FIELDS, *OPTION_FIELDS)
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    raise InvalidInput(f"field {name!r}={printable(value)} must be true or false")


def _options(fields: dict, defaults: SeparationConfig, served: dict) -> SeparationConfig:
    """The separation options asked for, of a model in `served` ({name: its entry in
    GET /v1/models})."""
    options = {key: coerce("separation", key, fields[key], "field")
               for key in OPTION_FIELDS if key in fields}
    model = options.get("model", defaults.model)
    if model not in served:
        raise InvalidInput(f"model {printable(model)} is not served here; served: {', '.join(served)}")
    if not served[model].get("servable", True):
        raise InvalidInput(f"model {model!r} is under licence {served[model]['licence']!r}, which "
                           "this service does not serve (models.allow_licences)")
    check_two_stems(options.get("two_stems", defaults.two_stems), model, served[model]["stems"])
    if not served[model].get("local"):
        options["repo"] = None  # not from the model directory: the catalogue's, or a cache's
    return defaults.model_copy(update=options)


def _ensemble(fields: dict, config: Config, served: dict) -> dict | None:
    """The ensemble asked for (a preset's name, or a spec: a JSON object, or its text in a
    form), its every part's model served and making the stems it reads (where known)."""
    spec = fields.get("ensemble")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError:
            raise InvalidInput("field 'ensemble' must be a JSON object") from None
    ensemble = ensemble_of(config.ensembles, fields.get("preset"), spec)
    if ensemble:
        check_options(ensemble, fields.get("two_stems", config.separation.two_stems))
        check_models(ensemble, {name: entry["stems"] for name, entry in served.items()})
        for model in {part["model"] for part in ensemble["parts"]}:
            if not served[model].get("servable", True):
                raise InvalidInput(f"model {model!r} is under licence {served[model]['licence']!r}, "
                                   "which this service does not serve (models.allow_licences)")
    return ensemble


def _task_options(fields: dict, config: Config, served: dict,
                  ensemble: dict | None) -> SeparationConfig:
    """The options of a task, of an ensemble's its first part's model (the served default's
    repo: the operator's, never a client's)."""
    if not ensemble:
        return _options(fields, config.separation, served)
    options = _options({k: v for k, v in fields.items() if k != "model"}, config.separation,
                       served)
    return options.model_copy(update={"model": first_model(ensemble)})


def check_fields(fields: dict) -> None:
    """Refuse what no request may name: a `repo` (a server folder, holding pickles), unknown
    fields."""
    if "repo" in fields:
        raise InvalidInput("field 'repo' is not accepted over HTTP: name a model the service serves "
                           "(GET /v1/models)")
    unknown = sorted(set(fields) - set(FIELDS) - {"input"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")


def task_spec(fields: dict, config: Config, served: dict, owner: str, *,
              input_path: str, sha256: str | None = None, uploaded: bool = False,
              duration_s: float | None = None) -> TaskSpec:
    """The spec a request asks for: `input_path` is the upload's file name, or the `input`
    the request named; the stems are kept by the service either way."""
    check_fields(fields)
    project = fields.get("project", "default")
    stem = PurePosixPath(input_path.rsplit("/", 1)[-1]).stem
    file_id = fields.get("file_id") or name_from_filename(stem)
    if not isinstance(project, str) or not isinstance(file_id, str):
        raise InvalidInput("fields 'project' and 'file_id' must be strings")
    check_task_names(project, file_id)
    ensemble = _ensemble(fields, config, served)
    return TaskSpec(task_id=new_task_id(), project=project, file_id=file_id,
                    input_path=input_path, output_dir="", owner=owner,
                    priority=parse_priority(fields.get("priority", "normal")),
                    options=_task_options(fields, config, served, ensemble), ensemble=ensemble,
                    force=_flag("force", fields.get("force", False)), cache=False,
                    input_sha256=sha256, uploaded=uploaded, kept=True, duration_s=duration_s,
                    webhook_url=check_url(fields["webhook_url"]) if fields.get("webhook_url")
                    else None, webhook_events=check_events(fields.get("webhook_events")))


def presets(config: Config) -> list[dict]:
    """The ensemble presets a task may name: each one's parts' models and its stems."""
    return [{"name": name, "models": [part["model"] for part in spec["parts"].values()],
             "stems": list(spec["stems"])} for name, spec in config.ensembles.presets.items()]
