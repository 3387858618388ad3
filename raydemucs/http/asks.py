"""What an HTTP request asks for, as a `TaskSpec`: its fields checked one by one, each refusal a
one-line `InvalidInput` naming the field."""
from __future__ import annotations

from pathlib import PurePosixPath

from ..core.config import SeparationConfig, coerce
from ..core.errors import InvalidInput
from ..core.names import check_task_names, name_from_filename, printable
from ..core.public import OPTION_FIELDS
from ..core.task import TaskSpec, new_task_id, parse_priority
from ..models.catalogue import check_two_stems
from ..webhooks.targets import check_events, check_url

TASK_FIELDS = ("project", "file_id", "priority", "force", "webhook_url", "webhook_events")
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


def check_fields(fields: dict) -> None:
    """Refuse what no request may name: a `repo` (a server folder, holding pickles), unknown
    fields."""
    if "repo" in fields:
        raise InvalidInput("field 'repo' is not accepted over HTTP: name a model the service serves "
                           "(GET /v1/models)")
    unknown = sorted(set(fields) - set(FIELDS) - {"input"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}")


def task_spec(fields: dict, defaults: SeparationConfig, served: dict, owner: str, *,
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
    return TaskSpec(task_id=new_task_id(), project=project, file_id=file_id,
                    input_path=input_path, output_dir="", owner=owner,
                    priority=parse_priority(fields.get("priority", "normal")),
                    options=_options(fields, defaults, served),
                    force=_flag("force", fields.get("force", False)), cache=False,
                    input_sha256=sha256, uploaded=uploaded, kept=True, duration_s=duration_s,
                    webhook_url=check_url(fields["webhook_url"]) if fields.get("webhook_url")
                    else None, webhook_events=check_events(fields.get("webhook_events")))
